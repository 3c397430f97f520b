"""The official `fal_client`, pointed at the simulator, must work unchanged.

If one of these fails, the simulator is wrong, not the test.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fal_client
import fal_client.client
import httpx
import pytest
from PIL import Image

from jobs.endpoints import WAN22_I2I, WAN25_I2I
from jobs.outputs import ModelOutput
from runner.simulator import FaultRates, ManualClock, RunningSimulator, SimConfig, run_simulator

KEY = "conformance-id:conformance-secret"


def _png_data_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 160, 90)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


INPUTS: dict[str, dict[str, Any]] = {
    WAN22_I2I: {"image_url": _png_data_uri(), "prompt": "a green field", "image_format": "png"},
    WAN25_I2I: {"image_urls": [_png_data_uri()], "prompt": "a green field", "num_images": 2, "seed": 3},
}


def _forget_cached_client() -> None:
    """fal_client caches its httpx client and credentials on first use; start each test afresh."""
    cached = vars(fal_client.sync_client)
    client = cached.pop("_client", None)
    cached.pop("_auth", None)
    if client is not None:
        client.close()


@contextmanager
def fal_against_simulator(monkeypatch: pytest.MonkeyPatch, clock: ManualClock | None = None,
                          **overrides: Any) -> Iterator[RunningSimulator]:  # fmt: skip
    """fal_client pointed at a simulator; on `clock`, runs end only when the test advances it."""
    settings: dict[str, Any] = {"run_time": "fixed:0.15", "concurrency": 2, "seed": 2, "key": KEY, **overrides}
    with run_simulator(SimConfig(**settings), clock) as sim:
        monkeypatch.setenv("FAL_KEY", KEY)
        monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", sim.base_url + "/")
        _forget_cached_client()
        try:
            yield sim
        finally:
            _forget_cached_client()


@pytest.mark.parametrize("endpoint", [WAN22_I2I, WAN25_I2I])
def test_submit_status_and_get(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    clock = ManualClock()
    with fal_against_simulator(monkeypatch, clock) as sim:
        handle = fal_client.submit(endpoint, INPUTS[endpoint], webhook_url="https://example.com/hook")
        status = handle.status(with_logs=True)
        assert isinstance(status, fal_client.InProgress)
        clock.advance(0.15)
        output = ModelOutput.model_validate(handle.get())
        assert output.images and all(image.url.startswith(sim.base_url) for image in output.images)
        completed = handle.status(with_logs=True)
        assert isinstance(completed, fal_client.Completed)
        assert completed.logs and completed.metrics["inference_time"] == pytest.approx(0.15)
        assert completed.error is None
        with httpx.Client() as downloads:
            for image in output.images:
                data = downloads.get(image.url).content
                assert Image.open(io.BytesIO(data)).size == (image.width, image.height)


@pytest.mark.parametrize("endpoint", [WAN22_I2I, WAN25_I2I])
def test_module_level_status_result_and_cancel(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    clock = ManualClock()
    with fal_against_simulator(monkeypatch, clock, concurrency=1, run_time="fixed:0.2"):
        first = fal_client.submit(endpoint, INPUTS[endpoint])
        second = fal_client.submit(endpoint, INPUTS[endpoint], priority="low")
        queued = fal_client.status(endpoint, second.request_id, with_logs=True)
        assert queued == fal_client.Queued(position=0)
        fal_client.cancel(endpoint, second.request_id)
        cancelled = fal_client.status(endpoint, second.request_id)
        assert isinstance(cancelled, fal_client.Completed) and cancelled.error_type == "client_cancelled"
        with pytest.raises(fal_client.client.FalClientHTTPError) as raised:
            fal_client.result(endpoint, second.request_id)
        assert (raised.value.status_code, raised.value.error_type) == (499, "client_cancelled")
        clock.advance(0.2)
        assert fal_client.result(endpoint, first.request_id) == first.get()
        with pytest.raises(fal_client.client.FalClientHTTPError) as late:
            fal_client.cancel(endpoint, first.request_id)
        assert late.value.status_code == 400


def test_client_retries_through_proxy_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    faults = FaultRates(proxy_5xx=1.0, rate_limit_429=1.0, drop_connection=1.0)
    with fal_against_simulator(monkeypatch, faults=faults, fault_limit=1, retry_after_s=0.1) as sim:
        result = fal_client.subscribe(WAN22_I2I, INPUTS[WAN22_I2I])
        assert ModelOutput.model_validate(result).images[0].content_type == "image/png"
        stats = sim.stats()
        assert stats["submits"] == 1
        assert {kind: stats["faults"][kind] for kind in ("proxy_5xx", "rate_limit_429", "drop_connection")} == {
            "proxy_5xx": 1, "rate_limit_429": 1, "drop_connection": 1}  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "arguments", "status_code", "error_type"),
    [
        ({}, {"image_url": "https://example.com/a.png"}, 422, None),
        ({"faults": FaultRates(model_error=1.0)}, INPUTS[WAN22_I2I], 500, "runner_server_error"),
    ],
)
def test_failed_results_raise_the_clients_http_error(monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any],
                                                     arguments: dict[str, Any], status_code: int,
                                                     error_type: str | None) -> None:  # fmt: skip
    with fal_against_simulator(monkeypatch, **overrides):
        handle = fal_client.submit(WAN22_I2I, arguments)
        with pytest.raises(fal_client.client.FalClientHTTPError) as raised:
            handle.get()
        assert (raised.value.status_code, raised.value.error_type) == (status_code, error_type)
        if status_code == 422:
            detail: Any = raised.value.message  # the 422 detail list, as fal_client keeps it
            assert detail[0]["loc"] == ["body", "prompt"]


def test_start_timeout_is_a_user_timeout_the_client_does_not_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    with fal_against_simulator(monkeypatch, clock, concurrency=1, run_time="fixed:30") as sim:
        fal_client.submit(WAN25_I2I, INPUTS[WAN25_I2I])
        late = fal_client.submit(WAN25_I2I, INPUTS[WAN25_I2I], start_timeout=1.1)
        assert isinstance(late.status(), fal_client.Queued)
        clock.advance(1.2)
        with pytest.raises(fal_client.client.FalClientHTTPError) as raised:
            late.get()
        assert (raised.value.status_code, raised.value.error_type) == (504, "request_timeout")
        assert sim.stats()["result_fetches"] == 1
