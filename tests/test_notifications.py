"""`--notify URL` of `run` and `submit`: the batch's summary POSTed to a real HTTP endpoint when it ends,
by `run` itself or by a real worker, with the URL's token never shown."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.errors import UsageError
from runner.batches.notifications import WORKER_NOTIFY, check_notify_url, shown_notify_url
from runner.ledger.connection import redis_client
from runner.ledger.store import Ledger
from tests.test_operate_e2e import wait_for
from tests.test_run_e2e import KEY, WAN_BATCH, cli_env, report_of, run_cli, write_manifest

TOKENS = ("S3CR3T", "Q5ECRET")


@pytest.mark.parametrize("url", ["http://hooks.example.test/x", "https://h:8443/a?b=c", "https://u:p@h/t0k3n"])
def test_an_http_url_may_be_notified(url: str) -> None:
    check_notify_url(url)


@pytest.mark.parametrize("url", ["ftp://h/x", "hooks.example.test/x", "https:///x", "http://h:0/x", "http://h:99999/x",
                                 "http://[::1/x", "mailto:a@b"])  # fmt: skip
def test_anything_else_is_refused_without_being_shown(url: str) -> None:
    with pytest.raises(UsageError) as refused:
        check_notify_url(url)
    assert str(refused.value) == "--notify: give an http(s) URL"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.test/services/T0K3N?key=K3Y", "https://hooks.example.test/…"),
        ("http://user:pw@127.0.0.1:8080/x#f", "http://127.0.0.1:8080/…"),
        ("http://[::1/x", "(an unreadable URL)"),
    ],
)
def test_a_notify_url_is_shown_by_its_host_only(url: str, shown: str) -> None:
    assert shown_notify_url(url) == shown


def with_a_failing_job(tmp_path: Path) -> Path:
    """batch.jsonl: 2 jobs that succeed, and 1 for an app fal does not have."""
    manifest = write_manifest(tmp_path, 2)
    with manifest.open("a") as handle:
        handle.write(json.dumps({"id": "nowhere", "endpoint": "fal-ai/no-such-app", "prompt": "x"}) + "\n")
    return manifest


def assert_no_token(*texts: str) -> None:
    for text in texts:
        assert not any(token in text for token in TOKENS), text


def test_run_posts_one_summary_of_the_batch_when_it_ends(tmp_path: Path, sim_factory: Any, hook: Any) -> None:
    sim = sim_factory()
    url, handler = hook
    out = tmp_path / "out"
    done = run_cli(["run", str(with_a_failing_job(tmp_path)), "--base-url", sim.base_url, "--out", str(out),
                    "--quiet", "--notify", f"{url}?token=Q5ECRET"], tmp_path)  # fmt: skip
    assert done.returncode == 1, "a job failed: the notify changes nothing of that"
    [posted] = handler.received
    assert posted["path"] == "/hooks/S3CR3T?token=Q5ECRET"
    payload = posted["json"]
    assert payload["batch_id"] == "batch" and payload["state"] == "done" and payload["jobs"] == 3
    assert payload["counts"]["succeeded"] == 2 and payload["counts"]["failed"] == 1
    assert payload["failures_by_error_type"] == {"unknown_endpoint": 1}
    assert payload["report_json"] == str((out / "batch" / "report.json").resolve())
    assert payload["started_at"] <= payload["ended_at"]
    port = url.split(":")[2].split("/")[0]
    assert f"notify http://127.0.0.1:{port}/…: sent (HTTP 200)" in done.stderr.splitlines()
    assert KEY not in json.dumps(payload)
    assert_no_token(done.stdout, done.stderr, (out / "batch" / "report.json").read_text(), json.dumps(payload))


def test_a_run_whose_notify_fails_says_so_and_exits_as_its_jobs_say(
    tmp_path: Path, sim_factory: Any, hook: Any
) -> None:
    sim = sim_factory()
    url, handler = hook
    handler.answers = [500, 503, 500]
    done = run_cli(["run", str(write_manifest(tmp_path, 1)), "--base-url", sim.base_url, "--out",
                    str(tmp_path / "out"), "--quiet", "--notify", url], tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(handler.received) == 3, "a few tries, then it gives up"
    [line] = [line for line in done.stderr.splitlines() if line.startswith("notify ")]
    assert line.endswith("/…: failed after 3 tries (HTTP 500)")
    assert_no_token(done.stdout, done.stderr)


@pytest.mark.parametrize("command", ["run", "submit"])
def test_a_bad_notify_url_is_a_usage_error_before_anything_starts(
    tmp_path: Path, redis_server: Any, command: str
) -> None:
    client = redis.Redis(unix_socket_path=redis_server.socket_path)
    client.flushall()
    manifest = write_manifest(tmp_path, 2)
    where = ["--sim"] if command == "run" else ["--redis", redis_server.broker_url]
    refused = run_cli([command, str(manifest), *where, "--out", str(tmp_path / "out"), "--notify",
                       "ftp://hooks.example.test/S3CR3T"], tmp_path)  # fmt: skip
    assert refused.returncode == 2
    assert "--notify: give an http(s) URL" in refused.stderr
    assert_no_token(refused.stdout, refused.stderr)
    assert not (tmp_path / "out").exists() and client.dbsize() == 0, "nothing recorded, nothing submitted"


def test_a_submitted_batch_is_notified_by_a_worker_which_tries_again_after_a_failure(
    tmp_path: Path, sim_factory: Any, redis_server: Any, hook: Any
) -> None:
    redis.Redis(unix_socket_path=redis_server.socket_path).flushall()
    sim = sim_factory()
    url, handler = hook
    handler.answers = [500]
    broker = redis_server.broker_url
    with_a_failing_job(tmp_path)
    log = tmp_path / "worker.log"
    with log.open("wb") as sink:
        worker = subprocess.Popen([WAN_BATCH, "worker", "--redis", broker, "--concurrency", "4"], cwd=tmp_path,
                                  env=cli_env(), stdout=sink, stderr=sink)  # fmt: skip
    try:
        submitted = run_cli(["submit", "batch.jsonl", "--redis", broker, "--base-url", sim.base_url, "--api-url",
                             f"{sim.base_url}/v1", "--notify", f"{url}?token=Q5ECRET"], tmp_path)  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        assert "when it ends, a worker POSTs its summary to http://127.0.0.1:" in submitted.stderr
        wait_for(lambda: len(handler.received) == 2, timeout_s=30)  # the first try, and one backoff later
        wait_for(lambda: "its end, try 2 of" in log.read_text(), timeout_s=10)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    first, second = handler.received
    assert first["json"] == second["json"], "the same summary, sent again"
    payload = second["json"]
    assert payload["batch_id"] == "batch" and payload["state"] == "done"
    assert payload["counts"]["succeeded"] == 2 and payload["failures_by_error_type"] == {"unknown_endpoint": 1}
    assert payload["report_csv"] == str((tmp_path / "out" / "batch" / "report.csv").resolve())
    text = log.read_text()
    tries = WORKER_NOTIFY.tries
    assert f"batch batch: notifying 127.0.0.1 of its end, try 1 of {tries}: HTTP 500" in text, "each try is logged"
    assert f"batch batch: notifying 127.0.0.1 of its end, try 2 of {tries}: HTTP 200" in text
    status = run_cli(["status", "batch", "--redis", broker, "--json"], tmp_path)
    assert_no_token(text, submitted.stdout, submitted.stderr, status.stdout, report_of(tmp_path / "out").__repr__())
    info = Ledger(redis_client(broker)).batch("batch")
    assert info is not None and info.summary is not None and info.summary["jobs"] == 3
