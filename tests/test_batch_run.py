"""How `wan-batch run` names a batch, picks its provider, guards its folder and starts its worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.signals import worker_init

from jobs.errors import FolderInUseError, UsageError
from jobs.status import JobStatus
from runner.batches.intake import batch_id_for, load_batch
from runner.batches.providers import check_same_provider, provider_for
from runner.batches.request import RunRequest
from runner.batches.run import StallWatch, Watchers, hold_folder, run_batch
from runner.embedded.server import EmbeddedRedis
from runner.fal.providers import FAL_QUEUE_URL, Provider
from runner.ledger.batch_info import BatchInfo
from runner.ledger.store import Ledger
from runner.tasks import create_app
from tests.test_run_e2e import write_manifest

PASSWORD = "hunter2-secret-pw"
SIM_URL = "http://127.0.0.1:40001"


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        ("batch.jsonl", "batch"),
        ("my batch (2).csv", "my-batch-2"),
        ("--..weird..--.yaml", "weird"),
        ("a.b.c.jsonl", "a.b.c"),
        ("under_score-dash.csv", "under_score-dash"),
        ("café crème.csv", "caf-cr-me"),
        ("日本語.csv", "batch"),
        ("...csv", "batch"),
        ("x" * 200 + ".csv", "x" * 80),
        ("ab " * 50 + ".csv", ("ab-" * 27)[:80]),
        ("$(rm -rf).csv", "rm--rf"),
        ("../../etc/passwd.csv", "passwd"),
        # Cut after cleaning: ids of batches already run depend on it, so it stays.
        ("x" * 79 + " y.csv", "x" * 79 + "-"),
    ],
)  # fmt: skip
def test_batch_id_for(file_name: str, expected: str) -> None:
    assert batch_id_for(Path("/somewhere") / file_name) == expected


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment without any credential, to which a test adds its own."""
    for name in ("FAL_KEY", "WAN_BATCH_GATEWAY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def request(base_url: str | None = None, **values: Any) -> RunRequest:
    return RunRequest(manifest=Path("m.jsonl"), base_url=base_url, **values)


@pytest.mark.parametrize(
    ("fal_key", "token", "base_url", "expected"),
    [
        ("k1", None, None, (FAL_QUEUE_URL, "Key", "k1")),
        ("k1", None, "https://fal.example/queue/", ("https://fal.example/queue", "Key", "k1")),
        (None, "t1", "https://gw.example", ("https://gw.example", "Bearer", "t1")),
        ("k1", "t1", "https://gw.example", ("https://gw.example", "Bearer", "t1")),
        ("k1", "t1", None, (FAL_QUEUE_URL, "Key", "k1")),
    ],
    ids=["fal", "fal-elsewhere", "gateway", "gateway-wins-with-url", "token-without-url-falls-back-to-fal-key"],
)  # fmt: skip
def test_provider_for_picks_the_credential(
    env: pytest.MonkeyPatch, fal_key: str | None, token: str | None, base_url: str | None, expected: tuple[str, ...]
) -> None:
    for name, value in (("FAL_KEY", fal_key), ("WAN_BATCH_GATEWAY_TOKEN", token)):
        if value is not None:
            env.setenv(name, value)
    provider = provider_for(request(base_url))
    assert (provider.base_url, provider.auth_scheme, provider.credential.get_secret_value()) == expected


@pytest.mark.parametrize(
    ("token", "base_url", "fragments"),
    [
        (None, None, ["no credential", "FAL_KEY", "--sim"]),
        (None, "https://gw.example", ["no credential", "FAL_KEY", "--sim"]),
        ("t1", None, ["WAN_BATCH_GATEWAY_TOKEN needs --base-url", "FAL_KEY"]),
    ],
)
def test_provider_for_without_a_usable_credential(
    env: pytest.MonkeyPatch, token: str | None, base_url: str | None, fragments: list[str]
) -> None:
    if token:
        env.setenv("WAN_BATCH_GATEWAY_TOKEN", token)
    with pytest.raises(UsageError) as caught:
        provider_for(request(base_url))
    assert all(fragment in str(caught.value) for fragment in fragments), caught.value


@pytest.mark.parametrize(
    ("base_url", "fragment"),
    [
        (f"https://user:{PASSWORD}@gw.example", "user info"),
        (f"https://:{PASSWORD}@gw.example", "user info"),
        (f"https://gw.example/q?token={PASSWORD}", "query"),
        (f"https://gw.example/q#{PASSWORD}", "fragment"),
        (f"ftp://gw.example/{PASSWORD}", "http(s) URL with a host"),
        (f"https:///{PASSWORD}", "http(s) URL with a host"),
        (PASSWORD, "http(s) URL with a host"),
        (f"https://gw.example:{PASSWORD}/", "port"),
        ("https://gw.example:0/", "port"),
        ("https://gw.example:70000/", "port"),
    ],
)  # fmt: skip
def test_an_unusable_base_url_is_refused_without_showing_it(
    env: pytest.MonkeyPatch, base_url: str, fragment: str
) -> None:
    env.setenv("WAN_BATCH_GATEWAY_TOKEN", "t1")
    with pytest.raises(UsageError) as caught:
        provider_for(request(base_url))
    message = str(caught.value)
    assert message.startswith("--base-url: ") and fragment in message, message
    assert PASSWORD not in message and "gw.example" not in message


def test_a_credential_with_a_line_break_is_refused_without_showing_it(env: pytest.MonkeyPatch) -> None:
    env.setenv("FAL_KEY", f"id:{PASSWORD}\nX-Injected: 1")
    with pytest.raises(UsageError) as caught:
        provider_for(request())
    assert "FAL_KEY: the credential is empty or holds a line break" in str(caught.value)
    assert PASSWORD not in str(caught.value)


def stored(provider_url: str, auth_scheme: str = "Key") -> BatchInfo:
    return BatchInfo.model_validate({"id": "b", "manifest": "/m.jsonl", "folder": "/out/b", "created_at": 0.0,
                                     "max_in_flight": 2, "provider_url": provider_url, "auth_scheme": auth_scheme})  # fmt: skip


FAL = Provider.fal(f"id:{PASSWORD}")
GATEWAY = Provider.gateway("https://gw.example/v1", PASSWORD)
LOCAL = Provider.fal(PASSWORD, "http://127.0.0.1:40002")


@pytest.mark.parametrize(
    ("existing", "provider", "sim", "fragments"),
    [
        (stored(FAL_QUEUE_URL), FAL, False, None),
        (stored("https://gw.example/v1/", "Bearer"), GATEWAY, False, None),
        (stored(SIM_URL), LOCAL, True, None),
        (stored(""), GATEWAY, False, None),
        (stored(FAL_QUEUE_URL), GATEWAY, False, [FAL_QUEUE_URL, "(FAL_KEY)", "https://gw.example/v1 (WAN_BATCH_GATEWAY_TOKEN)"]),
        (stored("https://gw.example/v1", "Bearer"), FAL, False, ["https://gw.example/v1", FAL_QUEUE_URL]),
        (stored("https://gw.example/v1", "Key"), Provider.gateway("https://gw.example/v1", "t"), False, ["(FAL_KEY)", "(WAN_BATCH_GATEWAY_TOKEN)"]),
        (stored(FAL_QUEUE_URL), LOCAL, True, [FAL_QUEUE_URL, "the simulator (--sim)"]),
        (stored(SIM_URL), FAL, False, [SIM_URL, FAL_QUEUE_URL, "rerun it with --sim"]),
        (stored(SIM_URL), LOCAL, False, [SIM_URL, "http://127.0.0.1:40002", "rerun it with --sim"]),
        (stored(f"https://user:{PASSWORD}@old.example"), FAL, False, ["https://old.example", FAL_QUEUE_URL]),
    ],
    ids=["same-fal", "same-gateway", "sim-again", "unknown", "fal-to-gateway", "gateway-to-fal", "scheme-change",
         "fal-to-sim", "sim-to-fal", "sim-to-another-url", "old-url-with-password"],
)  # fmt: skip
def test_check_same_provider(existing: BatchInfo, provider: Provider, sim: bool, fragments: list[str] | None) -> None:
    if fragments is None:
        check_same_provider(existing, provider, sim)
        return
    with pytest.raises(UsageError) as caught:
        check_same_provider(existing, provider, sim)
    message = str(caught.value)
    assert all(fragment in message for fragment in fragments), message
    assert PASSWORD not in message and "user" not in message


def test_stall_watch_tells_once_when_nothing_moves() -> None:
    told: list[float] = []
    watch = StallWatch(after_s=10.0, on_stall=told.append)
    waiting = {JobStatus.WAITING: 3, JobStatus.ADMITTED: 0}
    moved = {JobStatus.WAITING: 2, JobStatus.ADMITTED: 1}
    for counts, now_s in [(waiting, 0.0), (waiting, 9.9), (moved, 12.0), (moved, 21.9)]:
        watch.see(counts, now_s)
    assert told == [], "every change restarts the wait"
    for now_s in (22.0, 30.0, 100.0):
        watch.see(moved, now_s)
    assert told == [10.0], "told once"


def test_sim_with_a_shared_redis_is_refused(tmp_path: Path) -> None:
    run = request(sim=True, redis_url="redis://127.0.0.1:1/0", out=tmp_path / "out")
    with pytest.raises(UsageError, match="--sim cannot be used with --redis"):
        run_batch(run, load_batch(RunRequest(manifest=write_manifest(tmp_path, 1))), create_app, Watchers(lambda _c, _n: None))
    assert not (tmp_path / "out").exists()


def test_an_output_folder_held_by_another_process_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with hold_folder(out):
        pass  # released: the lock file stays, unlocked
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX);"
         " print('held', flush=True); sys.stdin.read()", str(out / ".wan-batch" / "run.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(FolderInUseError, match=f"{out} is in use by another wan-batch run or report"), hold_folder(out):
            pass
    finally:
        holder.communicate(timeout=10)
    with hold_folder(out):
        pass


def test_the_first_jobs_are_admitted_before_the_embedded_worker_starts(tmp_path: Path) -> None:
    """The window is filled, each submit due, before a worker of this run takes a step."""
    manifest = write_manifest(tmp_path, 3)
    run = RunRequest(manifest=manifest, out=tmp_path / "out", sim=True, sim_run_time="fixed:0.05", max_in_flight=2)
    socket_path = EmbeddedRedis(run.out / ".wan-batch" / "redis").socket_path
    in_flight_at_worker_start: list[int] = []

    def on_worker_init(**_: Any) -> None:
        with redis.Redis(unix_socket_path=socket_path) as client:
            in_flight_at_worker_start.append(Ledger(client).in_flight("batch"))

    worker_init.connect(on_worker_init, weak=False)
    try:
        result = run_batch(run, load_batch(run), create_app, Watchers(lambda _c, _n: None))
    finally:
        worker_init.disconnect(on_worker_init)
    assert result.counts[JobStatus.SUCCEEDED] == 3
    assert in_flight_at_worker_start == [2]


def test_a_batch_an_earlier_version_recorded_is_refused_with_a_way_out(tmp_path: Path, redis_client: redis.Redis) -> None:
    """Its jobs are laid out otherwise: running it again could submit jobs that already ran."""
    from runner.batches import operations
    from runner.batches.intake import record_batch

    ledger = Ledger(redis_client)
    manifest = write_manifest(tmp_path, 1)
    request = RunRequest(manifest=manifest, out=tmp_path / "out")
    old = {"id": "batch", "manifest": str(manifest.resolve()), "folder": str(tmp_path / "out" / "batch"),
           "created_at": 1.0, "max_in_flight": 2, "state": "open", "provider_url": FAL_QUEUE_URL}  # fmt: skip
    redis_client.hset(ledger.keys.batch("batch"), mapping={k: json.dumps(v) for k, v in old.items()})
    redis_client.zadd(ledger.keys.batches, {"batch": 1.0})
    redis_client.hset(ledger.keys.counts("batch"), mapping={"queued": 1})
    assert ledger.batch("batch").ledger_format == 1  # type: ignore[union-attr]
    with pytest.raises(UsageError, match="recorded by an earlier version of wan-batch") as refused:
        record_batch(ledger, request, load_batch(request), Provider.fal("k"))
    assert "wan-batch purge --batch batch" in str(refused.value)
    with pytest.raises(UsageError, match="earlier version"):
        operations.view_batch(ledger, "batch")
    removed, kept = operations.purge_batches(ledger, None, "batch")
    assert [p.batch_id for p in removed] == ["batch"] and kept == [], "purged although its jobs never ended here"
