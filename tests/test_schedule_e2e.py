"""Schedules through the real CLI: real Redis, real `wan-batch beat` processes, a real worker, the simulator."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.schedule import When
from runner.ledger.connection import redis_client
from runner.ledger.store import Ledger
from runner.schedules import beat
from runner.steps.dispatch import QUEUE
from runner.tasks import create_app
from tests.test_operate_e2e import wait_for
from tests.test_run_e2e import WAN_BATCH, cli_env, run_cli, write_manifest

SENT = "Sending due task schedule:nightly"


@pytest.fixture
def broker(redis_server: Any) -> str:
    """The session's Redis, emptied: no schedule, batch, lock or message from another test."""
    redis.Redis(unix_socket_path=redis_server.socket_path).flushall()
    url: str = redis_server.broker_url
    return url


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Any]:
    """Start `wan-batch` processes (beat, worker) logging to files; all are stopped at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, log: str, **env: str) -> subprocess.Popen[bytes]:
        with (tmp_path / log).open("wb") as out:
            process = subprocess.Popen([WAN_BATCH, *args], cwd=tmp_path, env=cli_env(**env), stdout=out, stderr=out)
        started.append(process)
        return process

    yield start
    for process in started:
        process.send_signal(signal.SIGTERM)
    for process in started:
        process.wait(timeout=30)


def schedule_cli(tmp_path: Path, broker: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["schedule", *args, "--redis", broker], tmp_path)


def listed(tmp_path: Path, broker: str) -> list[dict[str, Any]]:
    result = schedule_cli(tmp_path, broker, "list", "--json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def firings(tmp_path: Path, broker: str, name: str = "nightly") -> list[dict[str, Any]]:
    result = schedule_cli(tmp_path, broker, "show", name, "--json")
    assert result.returncode == 0, result.stderr
    found: list[dict[str, Any]] = json.loads(result.stdout)["firings"]
    return found


def soon(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")


def last_outcome(tmp_path: Path, broker: str) -> str | None:
    rows = listed(tmp_path, broker)
    return rows[0]["last"]["outcome"] if rows and rows[0]["last"] else None


def beat_sends(tmp_path: Path, *logs: str) -> int:
    return sum((tmp_path / log).read_text().count(SENT) for log in logs)


def test_a_schedule_fires_once_its_batch_runs_and_the_list_shows_the_outcome(
    tmp_path: Path, broker: str, processes: Any, sim_factory: Any, hook: Any
) -> None:
    sim = sim_factory()
    hook_url, received = hook
    write_manifest(tmp_path, 3)
    added = schedule_cli(tmp_path, broker, "add", "batch.jsonl", "--at", soon(8), "--tz", "UTC", "--name", "nightly",
                         "--base-url", sim.base_url, "--notify", hook_url, "--api-url", f"{sim.base_url}/v1",
                         "--start-timeout-s", "120")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("schedule nightly: once at ") and "  next: " in added.stdout
    # As docker-compose.yml runs them: the Redis comes from REDIS_URL.
    processes("worker", "--concurrency", "4", log="worker.log", REDIS_URL=broker)
    processes("beat", log="beat.log", REDIS_URL=broker)
    wait_for(lambda: last_outcome(tmp_path, broker) == "done", timeout_s=60)
    wait_for(lambda: received.received, timeout_s=30)
    [firing] = firings(tmp_path, broker)
    assert firing["trigger"] == "schedule" and not firing["late"] and firing["late_s"] < 10
    label = firing["id"].removeprefix("nightly-")
    assert firing["folder"] == str((tmp_path / "out" / "nightly" / label).resolve())
    assert firing["summary"]["counts"]["succeeded"] == 3
    report = json.loads((tmp_path / "out" / "nightly" / label / "report.json").read_text())
    assert report["batch_id"] == firing["id"] and report["summary"]["counts"]["succeeded"] == 3
    info = Ledger(redis_client(broker)).batch(firing["id"])
    assert info is not None and (info.api_url, info.start_timeout_s) == (f"{sim.base_url}/v1", 120.0)
    assert len(list((tmp_path / "out" / "nightly" / label / "images").iterdir())) == 3
    stats = sim.stats()
    assert stats["submits"] == 3 and stats["duplicate_submits"] == 0
    assert (info.images, stats["uploads"], stats["submits_with_data_uri"]) == ("upload", 1, 0), "the firing uploads"
    assert {r["priority"] for r in stats["requests"].values()} == {"low"}, "scheduled batches queue at low priority"
    [row] = listed(tmp_path, broker)
    assert row["next_run"] is None and row["next_shown"] == "never (it has fired)"
    text = schedule_cli(tmp_path, broker, "list").stdout
    assert f"{firing['id']}: done, 3 succeeded, estimated cost $0.15; report " in text  # 3 images at $0.05
    payload = received.received[-1]["json"]
    assert payload["schedule"] == "nightly" and payload["outcome"] == "done" and payload["id"] == firing["id"]
    wait_for(lambda: firings(tmp_path, broker)[0]["notified"] == "sent (HTTP 200)", timeout_s=10)
    assert beat_sends(tmp_path, "beat.log") == 1


def test_two_beat_processes_fire_a_schedule_once(tmp_path: Path, broker: str, processes: Any, sim_factory: Any) -> None:
    sim = sim_factory()
    write_manifest(tmp_path, 2)
    beats = [processes("beat", "--redis", broker, log=log) for log in ("beat-a.log", "beat-b.log")]
    processes("worker", "--redis", broker, log="worker.log")
    added = schedule_cli(tmp_path, broker, "add", "batch.jsonl", "--at", soon(8), "--tz", "UTC", "--name", "nightly",
                         "--base-url", sim.base_url)  # fmt: skip
    assert added.returncode == 0, added.stderr
    wait_for(lambda: last_outcome(tmp_path, broker) == "done", timeout_s=60)
    time.sleep(6)  # a standby beat that fired too would have done so by now (beat ticks every 5 s at most)
    assert [b.poll() for b in beats] == [None, None], "both beats still run: one fires, one stands by"
    holders = [log for log in ("beat-a.log", "beat-b.log") if "beat: Acquired lock" in (tmp_path / log).read_text()]
    assert len(holders) == 1
    assert beat_sends(tmp_path, "beat-a.log", "beat-b.log") == 1, "only the beat holding the lock fires"
    assert len(firings(tmp_path, broker)) == 1
    batches = json.loads(run_cli(["batches", "--redis", broker, "--json"], tmp_path).stdout)
    assert [b["batch_id"] for b in batches] == [firings(tmp_path, broker)[0]["id"]]
    assert sim.stats()["submits"] == 2


def test_a_removed_schedule_never_fires(tmp_path: Path, broker: str, processes: Any, sim_factory: Any) -> None:
    sim = sim_factory()
    write_manifest(tmp_path, 2)
    processes("beat", "--redis", broker, log="beat.log")
    processes("worker", "--redis", broker, log="worker.log")
    at = soon(10)
    added = schedule_cli(tmp_path, broker, "add", "batch.jsonl", "--at", at, "--tz", "UTC", "--name", "nightly",
                         "--base-url", sim.base_url)  # fmt: skip
    assert added.returncode == 0, added.stderr
    removed = schedule_cli(tmp_path, broker, "remove", "nightly")
    assert removed.returncode == 0 and removed.stdout.strip() == "schedule nightly removed"
    past = datetime.fromisoformat(at).replace(tzinfo=UTC) + timedelta(seconds=6)  # with beat ticking all along
    time.sleep(max(0.0, (past - datetime.now(UTC)).total_seconds()))
    assert beat_sends(tmp_path, "beat.log") == 0
    assert listed(tmp_path, broker) == []
    assert json.loads(run_cli(["batches", "--redis", broker, "--json"], tmp_path).stdout) == []
    assert sim.stats()["submits"] == 0


def test_a_firing_missed_while_no_beat_ran_fires_once_when_one_comes_back(
    tmp_path: Path, broker: str, processes: Any, sim_factory: Any, redis_server: Any
) -> None:
    sim = sim_factory()
    write_manifest(tmp_path, 2)
    now = datetime.now(UTC)
    minute = (now.minute + 30) % 60  # hourly, half an hour away from now: no slot comes during the test
    added = schedule_cli(tmp_path, broker, "add", "batch.jsonl", "--cron", f"{minute} * * * *", "--tz", "UTC",
                         "--name", "nightly", "--base-url", sim.base_url)  # fmt: skip
    assert added.returncode == 0, added.stderr
    first = processes("beat", "--redis", broker, log="beat-1.log")
    wait_for(lambda: "beat: Acquired lock" in (tmp_path / "beat-1.log").read_text(), timeout_s=30)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0 and beat_sends(tmp_path, "beat-1.log") == 0, "nothing was due"
    # Three hours pass with no beat running: the entry now says it last fired three hours ago.
    app = create_app(redis_server.broker_url)
    when = When.from_options(f"{minute} * * * *", None, "UTC", now)
    beat.install(app, "nightly", when, QUEUE, since=now - timedelta(hours=3))
    assert listed(tmp_path, broker)[0]["next_shown"].endswith("overdue; is `wan-batch beat` running?")
    processes("worker", "--redis", broker, log="worker.log")
    processes("beat", "--redis", broker, log="beat-2.log")
    wait_for(lambda: last_outcome(tmp_path, broker) == "done", timeout_s=60)
    time.sleep(6)
    assert beat_sends(tmp_path, "beat-2.log") == 1, "once, not once per missed slot"
    [firing] = firings(tmp_path, broker)
    latest = when.next_times(now - timedelta(hours=3), 3)[-1]
    assert latest <= datetime.now(UTC) and firing["slot"] == latest.timestamp(), "it fires for the latest slot"
    assert firing["missed"] == 2 and firing["late"] and 25 * 60 < firing["late_s"] < 35 * 60
    assert "no scheduler ran at its time; 2 earlier time(s) missed)" in schedule_cli(tmp_path, broker, "list").stdout
    [row] = listed(tmp_path, broker)
    next_run = datetime.fromisoformat(row["next_run"])
    assert next_run == when.next_after(datetime.now(UTC)) and next_run > datetime.now(UTC)
    assert sim.stats()["submits"] == 2


def test_run_now_pause_and_resume(tmp_path: Path, broker: str, processes: Any, sim_factory: Any) -> None:
    sim = sim_factory()
    write_manifest(tmp_path, 2)
    added = schedule_cli(tmp_path, broker, "add", "batch.jsonl", "--cron", "0 2 * * *", "--tz", "Europe/Berlin",
                         "--name", "nightly", "--base-url", sim.base_url, "--priority", "normal")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert added.stdout.count("  next: ") == 3 and "02:00 CET (01:00 UTC)" in added.stdout
    paused = schedule_cli(tmp_path, broker, "pause", "nightly")
    assert paused.returncode == 0 and listed(tmp_path, broker)[0]["next_shown"] == "paused"
    processes("worker", "--redis", broker, log="worker.log")
    ran = schedule_cli(tmp_path, broker, "run-now", "nightly")
    assert ran.returncode == 0, ran.stderr
    assert "(run-now) nightly-" in ran.stdout and ": running" in ran.stdout
    wait_for(lambda: last_outcome(tmp_path, broker) == "done", timeout_s=60)
    assert {r["priority"] for r in sim.stats()["requests"].values()} == {"normal"}
    resumed = schedule_cli(tmp_path, broker, "resume", "nightly")
    assert resumed.returncode == 0 and "02:00 CET (01:00 UTC)" in resumed.stdout
    [row] = listed(tmp_path, broker)
    assert row["next_run"] is not None and datetime.fromisoformat(row["next_run"]) > datetime.now(UTC)
    assert (row["cron"], row["tz"], row["overlap"], row["priority"]) == ("0 2 * * *", "Europe/Berlin", "skip", "normal")


def test_a_schedule_of_a_broken_manifest_is_refused_with_the_errors_of_validate(tmp_path: Path, broker: str) -> None:
    manifest = write_manifest(tmp_path, 2)
    row = json.loads(manifest.read_text().splitlines()[0])
    manifest.write_text(
        json.dumps({**row, "num_images": 9}) + "\n" + json.dumps({**row, "id": "b", "seed": "x"}) + "\n"
    )
    validated = run_cli(["validate", "batch.jsonl"], tmp_path)
    added = schedule_cli(tmp_path, broker, "add", "batch.jsonl", "--cron", "0 2 * * *")
    assert added.returncode == validated.returncode == 1
    errors = [line for line in validated.stderr.splitlines() if line.startswith("batch.jsonl:")]
    assert len(errors) == 2 and added.stderr.splitlines()[:2] == errors
    assert "not scheduled" in added.stderr and "Traceback" not in added.stderr
    assert listed(tmp_path, broker) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cron", "0 25 * * *"], '--cron: "0 25 * * *": hour: 25 is out of range 0-23'),
        (["--cron", "0 2 * *"], "needs 5 fields"),
        (["--cron", "0 2 * * *", "--tz", "Mars/Base"], '--tz: unknown time zone "Mars/Base"'),
        (["--at", "2020-01-01T02:00"], "is in the past"),
        (["--at", "tomorrow"], "--at:"),
        (["--cron", "0 2 * * *", "--at", "2030-01-01T02:00"], "not both"),
        ([], "give --cron or --at"),
        (["--cron", "0 2 * * *", "--notify", "ftp://x/y"], "--notify: give an http(s) URL"),
        (["--cron", "0 2 * * *", "--notify", "http://h:99999/x"], "--notify: give an http(s) URL"),
        (["--cron", "0 2 * * *", "--notify", "http://[::1/x"], "--notify: give an http(s) URL"),
        (["--cron", "0 2 * * *", "--tz", ""], '--tz: unknown time zone ""'),
        (["--cron", "0 2 * * *", "--name", ""], "--name: '' is not a schedule name"),
        (["--cron", "0 2 * * *", "--name", "no/slash"], "--name: 'no/slash' is not a schedule name"),
        (["--cron", "0 2 * * *", "--base-url", "http://user:pw@h/"], "--base-url:"),
        (["--cron", "0 2 * * *", "--api-url", "http://user:pw@h/v1"], "--api-url: give a plain http(s) URL"),
        (["--cron", "0 2 * * *", "--webhook-url", "/fal/webhook"], "--webhook-url: give an http(s) URL"),
    ],
)
def test_schedule_add_usage_errors(tmp_path: Path, broker: str, args: list[str], message: str) -> None:
    write_manifest(tmp_path, 1)
    added = schedule_cli(tmp_path, broker, "add", "batch.jsonl", *args)
    assert added.returncode == 2 and message in added.stderr, added.stderr
    assert "Traceback" not in added.stderr and "pw@" not in added.stderr


def test_a_taken_name_and_an_unknown_name_are_usage_errors(tmp_path: Path, broker: str) -> None:
    write_manifest(tmp_path, 1)
    assert schedule_cli(tmp_path, broker, "add", "batch.jsonl", "--cron", "0 2 * * *").returncode == 0
    again = schedule_cli(tmp_path, broker, "add", "batch.jsonl", "--cron", "0 3 * * *")
    assert again.returncode == 2 and "already a schedule 'batch'" in again.stderr
    replaced = schedule_cli(tmp_path, broker, "add", "batch.jsonl", "--cron", "0 3 * * *", "--replace")
    assert replaced.returncode == 0 and listed(tmp_path, broker)[0]["cron"] == "0 3 * * *"
    for command in ("remove", "pause", "resume", "run-now", "show"):
        result = schedule_cli(tmp_path, broker, command, "nope")
        assert result.returncode == 2 and "no schedule 'nope'" in result.stderr, (command, result.stderr)


def test_a_one_off_paused_past_its_time_says_it_will_not_fire(tmp_path: Path, broker: str) -> None:
    write_manifest(tmp_path, 1)
    at = soon(4)
    assert schedule_cli(tmp_path, broker, "add", "batch.jsonl", "--at", at, "--tz", "UTC").returncode == 0
    assert schedule_cli(tmp_path, broker, "pause", "batch").returncode == 0
    past = datetime.fromisoformat(at).replace(tzinfo=UTC) + timedelta(seconds=1)
    time.sleep(max(0.0, (past - datetime.now(UTC)).total_seconds()))
    resumed = schedule_cli(tmp_path, broker, "resume", "batch")
    assert resumed.returncode == 0 and "its time passed while it was paused: it will not fire" in resumed.stdout
    assert listed(tmp_path, broker)[0]["next_shown"] == "never (its time passed unfired)"
