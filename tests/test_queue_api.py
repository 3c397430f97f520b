"""QueueClient against the real simulator; httpx.MockTransport only where the simulator cannot go."""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from PIL import Image

from jobs.backoff import Backoff
from jobs.decisions import Call, CallFailed, Limits, RetryLater, decide
from jobs.endpoints import WAN22_I2I, WAN25_I2I
from jobs.errors import (
    AuthError,
    DownloadError,
    PermanentQueueError,
    QueueAPIError,
    ResultNotReadyError,
    SubmitUnconfirmedError,
    TransientQueueError,
)
from jobs.job import Job
from jobs.outputs import ModelOutput
from jobs.record import JobRecord
from jobs.status import JobStatus
from runner.fal.downloads import download_file
from runner.fal.providers import Provider
from runner.fal.queue_api import QueueClient, QueueOptions, QueueStatus, Submission, user_agent
from runner.simulator import FaultRates, ManualClock, RunningSimulator, SimConfig, run_simulator
from runner.steps.moves import call_failed

KEY = "fal-key-id:SECRETkey0123456789"
TOKEN = "gw-TOKEN-abcdef0123456789"
LIMITS = Limits(call_retries=4, unreachable_calls=4)
JOB = Job("j", "wan-batch-sim/echo", {}, "f", "m.csv", 1, 1)
T = TypeVar("T")


def png_data_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), (200, 40, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


IMAGE = png_data_uri()
INPUTS: dict[str, dict[str, Any]] = {
    WAN22_I2I: {"image_url": IMAGE, "prompt": "a red square at dusk", "aspect_ratio": "1:1"},
    WAN25_I2I: {"image_urls": [IMAGE], "prompt": "a red square at dusk", "image_size": "square", "num_images": 2},
}


def sim_config(**overrides: Any) -> SimConfig:
    settings: dict[str, Any] = {
        "concurrency": 4,
        "run_time": "fixed:0.05",
        "seed": 1,
        "key": KEY,
        "token": TOKEN,
        "faults": FaultRates(),
        "fault_limit": None,
        "retry_after_s": 1.0,
        "retention_s": 3600.0,
        **overrides,
    }
    return SimConfig(**settings)


def faulty(**rates: float) -> FaultRates:
    return FaultRates(**rates)


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSimulator]:
    with run_simulator(sim_config()) as running:
        yield running


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as client:
        yield client


@pytest.fixture
def start_sim() -> Iterator[Callable[..., RunningSimulator]]:
    """Start a simulator of its own for a test, stopped when the test ends."""
    running: list[AbstractContextManager[RunningSimulator]] = []

    def start(clock: ManualClock | None = None, **overrides: Any) -> RunningSimulator:
        manager = run_simulator(sim_config(**overrides), clock)
        running.append(manager)
        return manager.__enter__()

    yield start
    for manager in reversed(running):
        manager.__exit__(None, None, None)


def fal_client(http: httpx.Client, sim: RunningSimulator, options: QueueOptions | None = None) -> QueueClient:
    return QueueClient(http, Provider.fal(KEY, base_url=sim.base_url), options)


def wait_completed(client: QueueClient, submission: Submission, timeout_s: float = 10.0) -> QueueStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.status(submission.status_url)
        if status.status == "COMPLETED":
            return status
        assert time.monotonic() < deadline, f"still {status.status} after {timeout_s} s"
        time.sleep(0.02)


def as_a_step_would(
    call: Callable[[], T], kind: Call, limits: Limits = LIMITS, on_wait: Callable[[float], None] | None = None
) -> T:
    """`call()` again while the lifecycle's `decide` says so, as a job's step would; `on_wait` sees each delay.

    Raises the last error once `decide` says anything else (a new attempt, the end).
    """
    failures = 0
    while True:
        try:
            return call()
        except (QueueAPIError, DownloadError) as exc:
            seen = call_failed(kind, exc) if isinstance(exc, QueueAPIError) else \
                CallFailed(kind, "download_failed", str(exc), transient=exc.retryable)  # fmt: skip
            status = JobStatus.ADMITTED if kind is Call.SUBMIT else JobStatus.RUNNING
            decision = decide(seen, JobRecord(JOB, status, call_failures=failures), 3, limits, 0.5)
            if not isinstance(decision, RetryLater):
                raise
            if on_wait is not None:
                on_wait(decision.delay_s)
            failures += 1


# --- the whole cycle ---------------------------------------------------------


@pytest.mark.parametrize("endpoint", [WAN22_I2I, WAN25_I2I])
@pytest.mark.parametrize("provider_kind", ["fal", "gateway"])
def test_submit_status_result_cancel(
    sim: RunningSimulator, http: httpx.Client, tmp_path: Path, endpoint: str, provider_kind: str
) -> None:
    provider = Provider.fal(KEY, sim.base_url) if provider_kind == "fal" else Provider.gateway(sim.base_url, TOKEN)
    client = QueueClient(http, provider)

    submission = client.submit(endpoint, INPUTS[endpoint])

    owner_app = "/".join(endpoint.split("/")[:2])
    assert submission.response_url == f"{sim.base_url}/{owner_app}/requests/{submission.request_id}"
    assert submission.status_url == submission.response_url + "/status"
    assert submission.cancel_url == submission.response_url + "/cancel"
    assert submission.queue_position == 0
    done = wait_completed(client, submission)
    assert done.metrics and done.metrics["inference_time"] == pytest.approx(0.05)
    assert done.logs and done.logs[-1].message == "Inference finished"
    assert done.error is None

    output = ModelOutput.model_validate(client.result(submission.response_url))
    assert len(output.images) == (2 if endpoint == WAN25_I2I else 1)
    assert len(output.seeds) == len(output.images)
    for index, image in enumerate(output.images):
        got = download_file(http, image.url, tmp_path / f"{index}.img", 10_000_000, image.content_type)
        assert (got.content_type, got.width, got.height) == (image.content_type, image.width, image.height)
        assert got.size_bytes == image.file_size

    assert client.cancel(submission.cancel_url) == "ALREADY_COMPLETED"


def test_status_logs_only_when_asked(sim: RunningSimulator, http: httpx.Client) -> None:
    client = fal_client(http, sim)
    submission = client.submit("wan-batch-sim/echo", {"hello": "world"})
    wait_completed(client, submission)
    assert client.status(submission.status_url, with_logs=False).logs is None
    assert client.status(submission.status_url).logs


def test_queue_position_result_too_early_and_cancel(start_sim: Callable[..., RunningSimulator]) -> None:
    sim = start_sim(concurrency=1, run_time="fixed:60")
    with httpx.Client(timeout=10.0) as http:
        client = fal_client(http, sim)
        running, queued = (client.submit("wan-batch-sim/echo", {"n": n}) for n in range(2))

        assert client.status(queued.status_url).queue_position == 0
        assert client.status(running.status_url).status == "IN_PROGRESS"
        with pytest.raises(ResultNotReadyError, match="not completed yet") as caught:
            client.result(queued.response_url)
        assert caught.value.detail["status"] == "IN_QUEUE"
        assert caught.value.retryable is False

        assert client.cancel(queued.cancel_url) == "CANCELLATION_REQUESTED"
        assert client.cancel(running.cancel_url) == "CANCELLATION_REQUESTED"
        cancelled = client.status(queued.status_url)
        assert (cancelled.status, cancelled.error_type) == ("COMPLETED", "client_cancelled")
        with pytest.raises(PermanentQueueError) as failed:
            client.result(queued.response_url)
        assert (failed.value.status_code, failed.value.error_type) == (499, "client_cancelled")


def test_cancel_of_an_unknown_request_is_not_found(sim: RunningSimulator, http: httpx.Client) -> None:
    client = fal_client(http, sim)
    assert client.cancel(f"{sim.base_url}/fal-ai/wan/requests/no-such-id/cancel") == "NOT_FOUND"


def test_low_priority_waits_behind_normal(start_sim: Callable[..., RunningSimulator]) -> None:
    sim = start_sim(concurrency=1, run_time="fixed:60")
    with httpx.Client(timeout=10.0) as http:
        normal, low = fal_client(http, sim), fal_client(http, sim, QueueOptions(priority="low"))
        normal.submit("wan-batch-sim/echo", {"n": 0})  # takes the only slot
        late = low.submit("wan-batch-sim/echo", {"n": 1})
        normal.submit("wan-batch-sim/echo", {"n": 2})
        assert normal.status(late.status_url).queue_position == 1


def test_start_timeout_ends_as_request_timeout(start_sim: Callable[..., RunningSimulator]) -> None:
    clock = ManualClock()
    sim = start_sim(clock, concurrency=1, run_time="fixed:60")
    with httpx.Client(timeout=10.0) as http:
        client = fal_client(http, sim, QueueOptions(start_timeout_s=1.05))
        client.submit("wan-batch-sim/echo", {"n": 0})
        never_started = client.submit("wan-batch-sim/echo", {"n": 1})
        assert client.status(never_started.status_url).status == "IN_QUEUE"
        clock.advance(1.1)
        assert client.status(never_started.status_url).error_type == "request_timeout"
        with pytest.raises(PermanentQueueError) as caught:
            client.result(never_started.response_url)
    assert (caught.value.status_code, caught.value.error_type) == (504, "request_timeout")


def test_invalid_input_is_a_permanent_422_with_its_detail(sim: RunningSimulator, http: httpx.Client) -> None:
    client = fal_client(http, sim)
    submission = client.submit(WAN22_I2I, {"image_url": IMAGE})  # no prompt: the model rejects it
    wait_completed(client, submission)
    with pytest.raises(PermanentQueueError) as caught:
        client.result(submission.response_url)
    error = caught.value
    assert error.status_code == 422
    assert isinstance(error.detail, list) and error.detail[0]["loc"] == ["body", "prompt"]
    assert "body.prompt" in str(error)


def test_unknown_endpoint_is_permanent(sim: RunningSimulator, http: httpx.Client) -> None:
    with pytest.raises(PermanentQueueError) as caught:
        fal_client(http, sim).submit("fal-ai/no-such-app", {})
    assert caught.value.status_code == 404 and caught.value.fal_request_id


def test_malformed_endpoint_id_is_refused_before_any_call(sim: RunningSimulator, http: httpx.Client) -> None:
    with pytest.raises(ValueError, match="not a fal endpoint id"):
        fal_client(http, sim).submit("../../_stats/reset", {})


# --- credentials -------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "hint"),
    [
        (Provider.fal("fal-key-id:WRONGsecret987654321", "http://placeholder"), "check FAL_KEY"),
        (Provider.gateway("http://placeholder", "WRONG-token-987654321"), "check the gateway token"),
    ],
)
def test_refused_credential_is_never_shown(
    sim: RunningSimulator, http: httpx.Client, caplog: pytest.LogCaptureFixture, provider: Provider, hint: str
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = provider.model_copy(update={"base_url": sim.base_url})
    secret = provider.credential.get_secret_value()
    with pytest.raises(AuthError, match=hint) as caught:
        as_a_step_would(lambda: QueueClient(http, provider).submit(WAN22_I2I, INPUTS[WAN22_I2I]), Call.SUBMIT)
    error = caught.value
    assert error.status_code == 401 and error.retryable is False
    for shown in (str(error), repr(error), repr(error.detail), repr(provider), str(provider), caplog.text):
        assert secret not in shown
        assert secret.rpartition(":")[2] not in shown


def test_a_whole_cycle_logs_no_credential(
    sim: RunningSimulator, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = fal_client(http, sim)
    submission = client.submit("wan-batch-sim/echo", {"x": 1})
    wait_completed(client, submission)
    client.result(submission.response_url)
    assert caplog.records  # httpx and httpcore did log
    assert KEY not in caplog.text and KEY.partition(":")[2] not in caplog.text


@pytest.mark.parametrize(
    ("provider", "shown"),
    [
        (Provider.fal(KEY, "http://127.0.0.1:9"), "QueueClient(base_url='http://127.0.0.1:9', auth_scheme='Key')"),
        (Provider.gateway("https://gw.example/v1/", TOKEN),
         "QueueClient(base_url='https://gw.example/v1', auth_scheme='Bearer')"),
    ],
)  # fmt: skip
def test_repr_names_the_provider_never_the_credential(provider: Provider, shown: str) -> None:
    with httpx.Client() as http:
        client = QueueClient(http, provider)
    assert repr(client) == shown
    secret = provider.credential.get_secret_value()
    assert secret not in repr(client) and secret.rpartition(":")[2] not in repr(client)


# --- injected faults -----------------------------------------------------------


def test_proxy_5xx_is_transient_and_retried(start_sim: Callable[..., RunningSimulator], http: httpx.Client) -> None:
    sim = start_sim(faults=faulty(proxy_5xx=1.0), fault_limit=3)
    client = fal_client(http, sim)
    with pytest.raises(TransientQueueError) as caught:
        client.submit("wan-batch-sim/echo", {"n": 1})
    error = caught.value
    assert error.status_code in (502, 503, 504) and error.fal_request_id is None
    assert "nginx" in error.detail  # the HTML page, as text

    slept: list[float] = []
    submission = as_a_step_would(lambda: client.submit("wan-batch-sim/echo", {"n": 1}), Call.SUBMIT, on_wait=slept.append)
    assert submission.request_id
    assert len(slept) == 2
    stats = sim.stats()
    assert stats["faults"]["proxy_5xx"] == 3
    assert stats["submits"] == 1


def test_429_honours_retry_after(start_sim: Callable[..., RunningSimulator], http: httpx.Client) -> None:
    sim = start_sim(faults=faulty(rate_limit_429=1.0), fault_limit=2, retry_after_s=0.25)
    client = fal_client(http, sim)
    slept: list[float] = []
    submission = as_a_step_would(lambda: client.submit("wan-batch-sim/echo", {}), Call.SUBMIT, on_wait=slept.append)
    assert submission.request_id
    assert slept == [0.25, 0.25]
    assert sim.stats()["faults"]["rate_limit_429"] == 2


def test_dropped_connection_is_transient_and_retried(
    start_sim: Callable[..., RunningSimulator], http: httpx.Client
) -> None:
    sim = start_sim(faults=faulty(drop_connection=1.0), fault_limit=2)
    client = fal_client(http, sim)
    slept: list[float] = []
    # A status call needs no earlier submit (which a drop would leave unconfirmed): fal answers it at last.
    status_url = f"{sim.base_url}/wan-batch-sim/echo/requests/unknown/status"
    with pytest.raises(PermanentQueueError) as caught:
        as_a_step_would(lambda: client.status(status_url), Call.STATUS, on_wait=slept.append)
    assert caught.value.status_code == 404, "answered, after the drops"
    assert len(slept) == 2
    assert sim.stats()["faults"]["drop_connection"] == 2


def test_dropped_submit_is_unconfirmed_not_retried(
    start_sim: Callable[..., RunningSimulator], http: httpx.Client
) -> None:
    sim = start_sim(faults=faulty(drop_connection=1.0), fault_limit=1)
    client = fal_client(http, sim)
    slept: list[float] = []
    with pytest.raises(SubmitUnconfirmedError, match="may have been queued"):
        as_a_step_would(lambda: client.submit("wan-batch-sim/echo", {}), Call.SUBMIT, on_wait=slept.append)
    assert slept == []
    assert sim.stats()["submits"] == 0  # this time nothing was queued; the client cannot know


def test_lost_submit_response_is_unconfirmed(start_sim: Callable[..., RunningSimulator], http: httpx.Client) -> None:
    sim = start_sim(faults=faulty(lost_submit_response=1.0), fault_limit=1)
    client = fal_client(http, sim)
    with pytest.raises(SubmitUnconfirmedError) as caught:
        as_a_step_would(lambda: client.submit("wan-batch-sim/echo", {}), Call.SUBMIT)
    assert caught.value.retryable is False
    stats = sim.stats()
    assert stats["submits"] == 1 and stats["duplicate_submits"] == 0  # queued once, never twice


def test_model_error_is_permanent_with_a_retry_hint(
    start_sim: Callable[..., RunningSimulator], http: httpx.Client
) -> None:
    sim = start_sim(faults=faulty(model_error=1.0), fault_limit=1)
    client = fal_client(http, sim)
    submission = client.submit("wan-batch-sim/echo", {})
    assert wait_completed(client, submission).error_type == "runner_server_error"
    slept: list[float] = []
    with pytest.raises(PermanentQueueError) as caught:
        as_a_step_would(lambda: client.result(submission.response_url), Call.RESULT, on_wait=slept.append)
    error = caught.value
    assert (error.status_code, error.error_type, error.job_retryable) == (500, "runner_server_error", True)
    assert error.fal_request_id == submission.request_id
    assert "runner_server_error" in str(error) and "Simulated model failure" in str(error)
    assert slept == [] and sim.stats()["result_fetches"] == 1


def test_expired_result_is_a_permanent_404(start_sim: Callable[..., RunningSimulator], http: httpx.Client) -> None:
    sim = start_sim(faults=faulty(expired_result=1.0), fault_limit=1)
    client = fal_client(http, sim)
    submission = client.submit("wan-batch-sim/echo", {})
    wait_completed(client, submission)
    with pytest.raises(PermanentQueueError) as caught:
        client.result(submission.response_url)
    assert caught.value.status_code == 404 and caught.value.retryable is False


def first_output_url(client: QueueClient, submission: Submission) -> str:
    wait_completed(client, submission)
    return ModelOutput.model_validate(client.result(submission.response_url)).images[0].url


def test_truncated_download_is_retryable_and_leaves_nothing(
    start_sim: Callable[..., RunningSimulator], http: httpx.Client, tmp_path: Path
) -> None:
    sim = start_sim(faults=faulty(truncated_download=1.0), fault_limit=1)
    client = fal_client(http, sim)
    url = first_output_url(client, client.submit("wan-batch-sim/echo", {}))
    dest = tmp_path / "out.png"
    slept: list[float] = []

    def sleep(delay_s: float) -> None:
        assert list(tmp_path.iterdir()) == []  # the cut-short attempt left nothing behind
        slept.append(delay_s)

    got = as_a_step_would(lambda: download_file(http, url, dest, 10_000_000), Call.DOWNLOAD, on_wait=sleep)
    assert got.path == dest and got.content_type == "image/png"
    assert list(tmp_path.iterdir()) == [dest]
    assert len(slept) == 1
    stats = sim.stats()
    assert stats["faults"]["truncated_download"] == 1 and stats["downloads"] == 2


def test_truncated_download_error(
    start_sim: Callable[..., RunningSimulator], http: httpx.Client, tmp_path: Path
) -> None:
    sim = start_sim(faults=faulty(truncated_download=1.0), fault_limit=1)
    client = fal_client(http, sim)
    url = first_output_url(client, client.submit("wan-batch-sim/echo", {}))
    with pytest.raises(DownloadError) as caught:
        download_file(http, url, tmp_path / "out.png", 10_000_000)
    assert caught.value.retryable is True
    assert list(tmp_path.iterdir()) == []


def test_slow_download_completes(
    start_sim: Callable[..., RunningSimulator], http: httpx.Client, tmp_path: Path
) -> None:
    sim = start_sim(faults=faulty(slow_download=1.0), slow_download_s=0.2)
    client = fal_client(http, sim)
    url = first_output_url(client, client.submit("wan-batch-sim/echo", {}))
    got = download_file(http, url, tmp_path / "out.png", 10_000_000)
    assert (got.width, got.height) == (64, 64)
    assert sim.stats()["faults"]["slow_download"] == 1


def test_unreachable_queue_is_transient(http: httpx.Client) -> None:
    client = QueueClient(http, Provider.fal(KEY, "http://127.0.0.1:9"))
    with pytest.raises(TransientQueueError, match="ConnectError"):
        client.submit("wan-batch-sim/echo", {})  # never connected, so safely not queued


def test_a_proxy_that_never_recovers_uses_up_the_calls_budget(
    start_sim: Callable[..., RunningSimulator], http: httpx.Client
) -> None:
    sim = start_sim(faults=faulty(proxy_5xx=1.0))  # no limit: the proxy never recovers
    client = fal_client(http, sim)
    slept: list[float] = []
    with pytest.raises(TransientQueueError):
        as_a_step_would(lambda: client.submit("wan-batch-sim/echo", {}), Call.SUBMIT, on_wait=slept.append)
    assert sim.stats()["faults"]["proxy_5xx"] == LIMITS.call_retries + 1
    assert slept == pytest.approx([0.1, 0.2, 0.4, 0.8]), "fal_client's backoff (rand 0.5: no jitter)"


def test_retry_after_is_capped_by_the_policy(start_sim: Callable[..., RunningSimulator], http: httpx.Client) -> None:
    sim = start_sim(faults=faulty(rate_limit_429=1.0), fault_limit=1, retry_after_s=86400)
    client = fal_client(http, sim)
    slept: list[float] = []
    limits = LIMITS.model_copy(update={"call_backoff": Backoff(retry_after_cap_s=5.0)})
    assert as_a_step_would(lambda: client.submit("wan-batch-sim/echo", {}), Call.SUBMIT, limits, slept.append)
    assert slept == [5.0]


# --- what only a mock can show --------------------------------------------------


class Recorder:
    """An httpx.MockTransport handler answering from a script and keeping every request."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []
        self.http = httpx.Client(transport=httpx.MockTransport(self))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    def client(self, provider: Provider, options: QueueOptions | None = None) -> QueueClient:
        return QueueClient(self.http, provider, options)


MockQueue = Callable[[Callable[[httpx.Request], httpx.Response]], Recorder]


@pytest.fixture
def mock_queue() -> Iterator[MockQueue]:
    made: list[Recorder] = []

    def make(answer: Callable[[httpx.Request], httpx.Response]) -> Recorder:
        made.append(Recorder(answer))
        return made[-1]

    yield make
    for recorder in made:
        recorder.http.close()


def fal_queue_answer(request_id: str = "f88f1b41") -> dict[str, Any]:
    """The submit answer of seed 000: fal's own URLs, whoever was called."""
    base = f"https://queue.fal.run/fal-ai/wan/requests/{request_id}"
    return {
        "status": "IN_QUEUE",
        "request_id": request_id,
        "response_url": base,
        "status_url": f"{base}/status",
        "cancel_url": f"{base}/cancel",
        "logs": None,
        "metrics": {},
        "queue_position": 0,
    }


@pytest.mark.parametrize(
    ("base_url", "expected_prefix"),
    [
        ("https://www.kkiai.com", "https://www.kkiai.com/fal-ai/wan/requests/f88f1b41"),
        ("https://gw.example/fal/v1/", "https://gw.example/fal/v1/fal-ai/wan/requests/f88f1b41"),
    ],
)
def test_gateway_answering_with_fal_urls_is_called_on_its_own_host(
    mock_queue: MockQueue, base_url: str, expected_prefix: str
) -> None:
    # Mock: the simulator builds its URLs from the Host it was called at, so it cannot answer
    # with another host's URLs the way the gateway of seed 000 does.
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json=fal_queue_answer())
        return httpx.Response(202, json={"status": "IN_PROGRESS", "logs": None})

    recorder = mock_queue(answer)
    client = recorder.client(Provider.gateway(base_url, TOKEN))
    submission = client.submit(WAN22_I2I, INPUTS[WAN22_I2I])
    assert submission.response_url == expected_prefix
    assert submission.status_url == f"{expected_prefix}/status"
    assert submission.cancel_url == f"{expected_prefix}/cancel"
    client.status(submission.status_url)
    client.status(fal_queue_answer()["status_url"])  # a stored fal URL is re-based too
    assert {r.url.host for r in recorder.requests} == {httpx.URL(base_url).host}
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in recorder.requests)


def test_submit_sends_options_as_headers_and_webhook_as_query(mock_queue: MockQueue) -> None:
    # Mock: the simulator acts on these headers but does not echo them back.
    recorder = mock_queue(lambda request: httpx.Response(200, json=fal_queue_answer()))
    options = QueueOptions(priority="low", start_timeout_s=90, object_expiration_s=3600, no_server_retry=True)
    client = recorder.client(Provider.fal(KEY), options)
    client.submit(WAN22_I2I, {"prompt": "p"}, webhook_url="https://hooks.example/fal?job=1")
    request = recorder.requests[0]
    assert str(request.url).startswith(f"https://queue.fal.run/{WAN22_I2I}?fal_webhook=https")
    assert request.url.params["fal_webhook"] == "https://hooks.example/fal?job=1"
    assert request.headers["authorization"] == f"Key {KEY}"
    assert request.headers["x-fal-queue-priority"] == "low"
    assert request.headers["x-fal-request-timeout"] == "90.0"
    assert json.loads(request.headers["x-fal-object-lifecycle-preference"]) == {"expiration_duration_seconds": 3600}
    assert request.headers["x-fal-no-retry"] == "1"
    assert request.headers["user-agent"] == user_agent() and user_agent().startswith("wan-batch/")
    assert json.loads(request.content) == {"prompt": "p"}


def test_submit_without_options_sends_none_of_their_headers(mock_queue: MockQueue) -> None:
    # Mock: as above, only a recorder can show a header's absence.
    recorder = mock_queue(lambda request: httpx.Response(200, json=fal_queue_answer()))
    recorder.client(Provider.fal(KEY)).submit(WAN22_I2I, {})
    sent = {name.lower() for name in recorder.requests[0].headers}
    assert not sent & {"x-fal-queue-priority", "x-fal-request-timeout", "x-fal-object-lifecycle-preference"}
    assert "x-fal-no-retry" not in sent and "fal_webhook" not in str(recorder.requests[0].url)


def test_retry_after_as_an_http_date(mock_queue: MockQueue) -> None:
    # Mock: the simulator's Retry-After is always delta-seconds.
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    recorder = mock_queue(lambda request: httpx.Response(429, headers={"Retry-After": when}, json={"detail": "slow"}))
    with pytest.raises(TransientQueueError) as caught:
        recorder.client(Provider.fal(KEY)).status("https://queue.fal.run/fal-ai/wan/requests/x/status")
    assert caught.value.retry_after_s == pytest.approx(30, abs=2)


def test_user_start_timeout_from_a_proxy_is_still_permanent(mock_queue: MockQueue) -> None:
    # Mock: the simulator always adds x-fal-request-id, which alone already makes a 504 permanent.
    headers = {"X-Fal-Request-Timeout-Type": "user"}
    recorder = mock_queue(lambda request: httpx.Response(504, headers=headers, json={"detail": "Timed out"}))
    with pytest.raises(PermanentQueueError) as caught:
        recorder.client(Provider.fal(KEY)).result("https://queue.fal.run/fal-ai/wan/requests/x")
    assert caught.value.error_type == "request_timeout"


def test_html_error_body_from_fal_becomes_text_detail(mock_queue: MockQueue) -> None:
    # Mock: the simulator's HTML pages come only from its proxy faults, without x-fal-request-id.
    page = "<html><body>" + "Internal error " * 40 + "</body></html>"
    headers = {"x-fal-request-id": "r1", "X-Fal-Error-Type": "internal_error", "Content-Type": "text/html"}
    recorder = mock_queue(lambda request: httpx.Response(500, headers=headers, text=page))
    with pytest.raises(PermanentQueueError) as caught:
        recorder.client(Provider.fal(KEY)).result("https://queue.fal.run/fal-ai/wan/requests/r1")
    error = caught.value
    assert (error.detail, error.error_type, error.fal_request_id) == (page[:200], "internal_error", "r1")


def test_a_server_echoing_the_credential_is_redacted(mock_queue: MockQueue) -> None:
    # Mock: the simulator never repeats a credential; some gateways do.
    body = {"detail": f"token {TOKEN} is not valid for this plan", "error_type": "forbidden"}
    recorder = mock_queue(lambda request: httpx.Response(403, json=body))
    with pytest.raises(AuthError, match="check the gateway token") as caught:
        recorder.client(Provider.gateway("https://gw.example", TOKEN)).submit(WAN22_I2I, {})
    assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value.detail)
    assert "[redacted]" in caught.value.detail


def test_submit_answer_without_request_id_is_unconfirmed(mock_queue: MockQueue) -> None:
    # Mock: the simulator always answers a created request with its id.
    recorder = mock_queue(lambda request: httpx.Response(200, json={"status": "IN_QUEUE"}))
    with pytest.raises(SubmitUnconfirmedError, match="without a request_id"):
        recorder.client(Provider.fal(KEY)).submit(WAN22_I2I, {})


def test_submit_answer_without_urls_falls_back_to_owner_and_app(mock_queue: MockQueue) -> None:
    # Mock: the simulator always returns the URLs; a thin gateway might not.
    recorder = mock_queue(lambda request: httpx.Response(200, json={"request_id": "abc"}))
    submission = recorder.client(Provider.gateway("https://gw.example", TOKEN)).submit(WAN22_I2I, {})
    assert submission.status_url == "https://gw.example/fal-ai/wan/requests/abc/status"
    assert submission.response_url == "https://gw.example/fal-ai/wan/requests/abc"


@pytest.mark.parametrize(
    ("call", "exception", "expected"),
    [
        ("submit", httpx.ReadTimeout("timed out"), SubmitUnconfirmedError),
        ("submit", httpx.RemoteProtocolError("Server disconnected"), SubmitUnconfirmedError),
        ("submit", httpx.ConnectTimeout("timed out"), TransientQueueError),
        ("submit", httpx.WriteError("broken pipe"), TransientQueueError),
        ("status", httpx.ReadTimeout("timed out"), TransientQueueError),
        ("result", httpx.ReadError("reset"), TransientQueueError),
        ("cancel", httpx.PoolTimeout("pool"), TransientQueueError),
        ("status", httpx.TooManyRedirects("loop"), PermanentQueueError),
    ],
)
def test_transport_errors_are_classified(
    mock_queue: MockQueue, call: str, exception: Exception, expected: type[QueueAPIError]
) -> None:
    # Mock: the simulator cannot time out a read, or fail between connect and answer, on cue.
    def answer(request: httpx.Request) -> httpx.Response:
        raise exception

    client = mock_queue(answer).client(Provider.fal(KEY))
    url = "https://queue.fal.run/fal-ai/wan/requests/x"
    calls: dict[str, Callable[[], object]] = {
        "submit": lambda: client.submit(WAN22_I2I, {}),
        "status": lambda: client.status(url + "/status"),
        "result": lambda: client.result(url),
        "cancel": lambda: client.cancel(url + "/cancel"),
    }
    with pytest.raises(expected) as caught:
        calls[call]()
    assert type(caught.value) is expected
    assert type(exception).__name__ in str(caught.value)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (202, {"status": "CANCELLATION_REQUESTED"}, "CANCELLATION_REQUESTED"),
        (400, {"status": "ALREADY_COMPLETED"}, "ALREADY_COMPLETED"),
        (404, {"status": "NOT_FOUND"}, "NOT_FOUND"),
        (404, {"detail": "Request not found"}, "NOT_FOUND"),
        (200, {"status": "OK"}, "OK"),
    ],
)
def test_cancel_answers(mock_queue: MockQueue, status: int, body: dict[str, str], expected: str) -> None:
    # Mock: the simulator never answers OK, nor a 404 without a status.
    recorder = mock_queue(lambda request: httpx.Response(status, json=body))
    client = recorder.client(Provider.fal(KEY))
    assert client.cancel("https://queue.fal.run/fal-ai/wan/requests/x/cancel") == expected
    assert recorder.requests[0].method == "PUT"


def test_cancel_400_other_than_already_completed_is_an_error(mock_queue: MockQueue) -> None:
    # Mock: as above.
    body = {"detail": "bad", "error_type": "bad_request"}
    recorder = mock_queue(lambda request: httpx.Response(400, json=body))
    with pytest.raises(PermanentQueueError, match="bad_request"):
        recorder.client(Provider.fal(KEY)).cancel("https://queue.fal.run/fal-ai/wan/requests/x/cancel")


def test_status_answer_of_an_unknown_shape_is_permanent(mock_queue: MockQueue) -> None:
    # Mock: the simulator always answers a known status.
    recorder = mock_queue(lambda request: httpx.Response(200, json={"status": "FAILED"}))
    with pytest.raises(PermanentQueueError, match="unexpected answer") as caught:
        recorder.client(Provider.fal(KEY)).status("https://queue.fal.run/fal-ai/wan/requests/x/status")
    assert caught.value.error_type == "invalid_response"
