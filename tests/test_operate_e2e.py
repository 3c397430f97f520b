"""Operating batches through the real CLI: several workers on one Redis, kills, cancel, retry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from runner.simulator import FaultRates
from tests.test_run_e2e import WAN_BATCH, cli_env, report_of, run_cli, write_manifest


def start_worker(cwd: Path, broker_url: str) -> subprocess.Popen[bytes]:
    env = cli_env()
    return subprocess.Popen([WAN_BATCH, "worker", "--redis", broker_url, "--concurrency", "4", "--loglevel", "WARNING"],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def max_outstanding(requests: Any) -> int:
    """The most requests the simulator held at once (submitted, not completed), from its timings."""
    events = []
    for request in requests:
        events.append((request["submitted_at"], 1))
        if request["completed_at"] is not None:
            events.append((request["completed_at"], -1))
    most = current = 0
    for _, change in sorted(events, key=lambda event: (event[0], event[1])):
        current += change
        most = max(most, current)
    return most


def wait_for(condition: Any, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def test_two_workers_one_window_and_a_killed_worker(tmp_path: Path, sim_factory: Any, redis_server: Any) -> None:
    """The window holds across worker processes; a SIGKILLed worker costs no double submission."""
    redis.Redis(unix_socket_path=redis_server.socket_path).flushall()
    sim = sim_factory(concurrency=2, run_time="fixed:0.3")  # fal runs fewer than the window: jobs queue there
    write_manifest(tmp_path, 30)
    broker = redis_server.broker_url
    workers = [start_worker(tmp_path, broker), start_worker(tmp_path, broker)]
    try:
        submitted = run_cli(["submit", "batch.jsonl", "--redis", broker, "--base-url", sim.base_url, "--api-url",
                             f"{sim.base_url}/v1", "--start-timeout-s", "3", "--max-in-flight", "4"], tmp_path)  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        assert submitted.stdout.strip() == "batch", "prints the batch id at once"
        wait_for(lambda: sim.stats()["submits"] >= 8)
        os.kill(workers[0].pid, signal.SIGKILL)  # with tasks taken and in progress: their timers come back
        workers[0].wait()
        watched = run_cli(["watch", "batch", "--redis", broker], tmp_path, timeout_s=120)
        assert watched.returncode == 0, watched.stderr
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
    stats = sim.stats()
    outstanding = max_outstanding(stats["requests"].values())
    assert 3 <= outstanding <= 4, "requests at fal (queued or running) never exceeded the window of 4"
    assert stats["max_in_progress"] <= 2
    assert stats["duplicate_submits"] == 0
    status = json.loads(run_cli(["status", "batch", "--redis", broker, "--json"], tmp_path).stdout)
    assert status["counts"]["succeeded"] == 30 and status["finished"], "a submit the kill cut off is reconciled"
    assert stats["submits"] == 30


def submit_until_at_fal(cwd: Path, sim: Any, broker: str, window: int) -> None:
    """Submit batch.jsonl with a window of `window` and wait until that many of its jobs are at fal."""
    assert run_cli(["submit", "batch.jsonl", "--redis", broker, "--base-url", sim.base_url,
                    "--max-in-flight", str(window)], cwd).returncode == 0  # fmt: skip

    def at_fal() -> int:
        status = run_cli(["status", "batch", "--redis", broker, "--json"], cwd)
        counts = json.loads(status.stdout)["counts"] if status.returncode == 0 else {}
        return int(counts.get("queued", 0) + counts.get("running", 0))

    wait_for(lambda: at_fal() == window)


def test_cancel_from_a_shell_without_a_key_has_the_workers_cancel_at_fal(
    tmp_path: Path, sim_factory: Any, redis_server: Any
) -> None:
    redis.Redis(unix_socket_path=redis_server.socket_path).flushall()
    sim = sim_factory(concurrency=2, run_time="fixed:30")
    write_manifest(tmp_path, 6)
    broker = redis_server.broker_url
    worker = start_worker(tmp_path, broker)
    try:
        submit_until_at_fal(tmp_path, sim, broker, 2)
        cancelled = run_cli(["cancel", "batch", "--redis", broker], tmp_path, FAL_KEY="")  # no key in this shell
        # Nobody follows a submitted batch: a worker writes its report once its last job ended.
        wait_for(lambda: (tmp_path / "out" / "batch" / "report.json").exists(), timeout_s=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "batch batch cancelled: 2 cancelled at fal, 4 never sent" in cancelled.stdout
    assert sim.stats()["cancels"] == 2 and sim.stats()["submits"] == 2, "the worker made the cancels at fal"
    status = json.loads(run_cli(["status", "batch", "--redis", broker, "--json"], tmp_path).stdout)
    assert status["state"] == "cancelled" and status["counts"]["cancelled"] == 6
    assert status["cancel"] == {"cancelled_at_fal": 2, "finished": 0, "never_sent": 4, "gone": 0,
                                "not_reached_yet": 0, "collecting": 0}  # fmt: skip
    batches = run_cli(["batches", "--redis", broker], tmp_path)
    assert batches.stdout.startswith("batch  cancelled  ") and "6 cancelled" in batches.stdout
    report = json.loads((tmp_path / "out" / "batch" / "report.json").read_text())
    assert report["summary"]["counts"]["cancelled"] == 6


def test_retry_after_a_cancel_whose_requests_had_finished_collects_them_and_submits_nothing(
    tmp_path: Path, sim_factory: Any, redis_server: Any
) -> None:
    redis.Redis(unix_socket_path=redis_server.socket_path).flushall()
    sim = sim_factory(concurrency=3, run_time="fixed:4")  # long enough to stop the worker while they run
    write_manifest(tmp_path, 3)
    broker = redis_server.broker_url
    worker = start_worker(tmp_path, broker)
    try:
        submit_until_at_fal(tmp_path, sim, broker, 3)
    finally:
        worker.send_signal(signal.SIGTERM)  # no worker now: the requests finish at fal, nobody collects them
        worker.wait(timeout=30)
    wait_for(lambda: all(r["completed_at"] for r in sim.stats()["requests"].values()))
    cancelled = run_cli(["cancel", "batch", "--redis", broker, "--wait-s", "0.5"], tmp_path, FAL_KEY="")
    assert cancelled.returncode == 1, "nothing was cancelled at fal yet, and it says so"
    assert "3 request(s) not settled yet" in cancelled.stderr and sim.stats()["cancels"] == 0
    early = run_cli(["retry", "batch", "--redis", broker, "--status", "cancelled"], tmp_path)
    assert early.returncode == 2 and "3 request(s) of its cancel are not settled yet" in early.stderr
    worker = start_worker(tmp_path, broker)
    try:
        wait_for(lambda: (tmp_path / "out" / "batch" / "report.json").exists(), timeout_s=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    retried = run_cli(["retry", "batch", "--redis", broker, "--status", "cancelled"], tmp_path)
    assert "0 job(s) queued" in retried.stdout, "none was cancelled: fal had run them all"
    stats = sim.stats()
    assert stats["submits"] == 3 and stats["duplicate_submits"] == 0, "nothing was submitted again"
    assert stats["cancels"] == 3, "each was asked to cancel, and fal said it had finished"
    status = json.loads(run_cli(["status", "batch", "--redis", broker, "--json"], tmp_path).stdout)
    assert status["counts"]["succeeded"] == 3 and status["cancel"]["finished"] == 3
    report = json.loads((tmp_path / "out" / "batch" / "report.json").read_text())
    for row in report["rows"]:
        assert (tmp_path / "out" / "batch" / row["output_path"]).is_file(), "paid for, so saved"


def test_retry_reruns_exactly_the_failed_rows_of_an_output_folder(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(faults=FaultRates(model_error=1.0), fault_limit=2)
    write_manifest(tmp_path, 5)
    args = ["run", "batch.jsonl", "--base-url", sim.base_url, "--out", "out", "--quiet", "--max-attempts", "1",
            "--max-in-flight", "1"]  # fmt: skip
    first = run_cli(args, tmp_path)
    assert first.returncode == 1
    status = json.loads(run_cli(["status", "batch", "--out", "out", "--json"], tmp_path).stdout)
    assert status["counts"]["failed"] == 2 and status["counts"]["succeeded"] == 3
    failed_ids = sorted(j["job_id"] for j in status["errors"]["runner_server_error"]["latest"])
    retried = run_cli(["retry", "batch", "--out", "out", "--error-type", "runner_server_error"], tmp_path)
    assert retried.returncode == 0, retried.stderr
    assert "2 job(s) queued for a new attempt" in retried.stdout
    second = run_cli(args, tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    rows = {r["job_id"]: r for r in report_of(tmp_path / "out")["rows"]}
    assert all(r["status"] == "succeeded" for r in rows.values())
    assert sorted(j for j, r in rows.items() if r["attempts"] == 2) == failed_ids
    assert sim.stats()["submits"] == 7 and sim.stats()["duplicate_submits"] == 2, "only the 2 failed rows ran again"
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(failed_ids[0] + "\n")
    none = run_cli(["retry", "batch", "--out", "out", "--ids", str(ids_file)], tmp_path)
    assert "0 job(s) queued" in none.stdout, "a job that succeeded is never run again"


def test_operations_on_an_unknown_batch_or_folder_are_usage_errors(tmp_path: Path) -> None:
    for args in (["status", "nope", "--out", str(tmp_path)], ["cancel", "nope", "--out", str(tmp_path)]):
        done = run_cli(args, tmp_path)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "holds no batches" in done.stderr
    submit = run_cli(["submit", str(write_manifest(tmp_path, 1))], tmp_path)
    assert submit.returncode == 2 and "submit needs a shared Redis" in submit.stderr


def test_a_worker_can_serve_an_output_folder(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(faults=FaultRates(model_error=1.0), fault_limit=1)
    write_manifest(tmp_path, 2)
    first = run_cli(["run", "batch.jsonl", "--base-url", sim.base_url, "--out", "out", "--quiet", "--max-attempts",
                     "1"], tmp_path)  # fmt: skip
    assert first.returncode == 1
    assert run_cli(["retry", "batch", "--out", "out"], tmp_path).returncode == 0
    env = cli_env()
    worker = subprocess.Popen([WAN_BATCH, "worker", "--out", "out", "--loglevel", "WARNING"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: sim.stats()["submits"] >= 3 and json.loads(
            run_cli(["status", "batch", "--out", "out", "--json"], tmp_path).stdout)["finished"])  # fmt: skip
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    status = json.loads(run_cli(["status", "batch", "--out", "out", "--json"], tmp_path).stdout)
    assert status["counts"]["succeeded"] == 2 and sim.stats()["submits"] == 3


def test_purge_removes_finished_batches_from_the_ledger_and_leaves_their_files(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory()
    write_manifest(tmp_path, 3)
    assert run_cli(["run", "batch.jsonl", "--base-url", sim.base_url, "--out", "out", "--quiet"], tmp_path).returncode == 0
    files = sorted(p.relative_to(tmp_path / "out" / "batch") for p in (tmp_path / "out" / "batch").rglob("*"))
    listed = run_cli(["batches", "--out", "out"], tmp_path)
    assert listed.stdout.startswith("batch  done  "), listed.stdout
    young = run_cli(["purge", "--out", "out"], tmp_path)
    assert young.returncode == 0 and "0 batch(es) removed" in young.stdout, "it ended less than 30 days ago"
    bad = run_cli(["purge", "--out", "out", "--older-than", "soon"], tmp_path)
    assert bad.returncode == 2 and "'soon' is not a duration such as 30d" in bad.stderr and "Traceback" not in bad.stderr
    purged = run_cli(["purge", "--out", "out", "--batch", "batch"], tmp_path)
    assert purged.returncode == 0, purged.stderr
    assert "removed batch batch: 3 job(s), ended " in purged.stdout
    assert run_cli(["batches", "--out", "out"], tmp_path).stdout == ""
    gone = run_cli(["status", "batch", "--out", "out"], tmp_path)
    assert gone.returncode == 2 and "no batch 'batch'" in gone.stderr
    assert sorted(p.relative_to(tmp_path / "out" / "batch") for p in (tmp_path / "out" / "batch").rglob("*")) == files
    again = run_cli(["run", "batch.jsonl", "--base-url", sim.base_url, "--out", "out", "--quiet"], tmp_path)
    assert again.returncode == 0 and sim.stats()["submits"] == 6, "a purged batch is forgotten: a rerun runs it anew"


def test_purge_keeps_a_batch_that_has_not_ended(tmp_path: Path, sim_factory: Any, redis_server: Any) -> None:
    redis.Redis(unix_socket_path=redis_server.socket_path).flushall()
    sim = sim_factory()
    write_manifest(tmp_path, 2)
    broker = redis_server.broker_url
    assert run_cli(["submit", "batch.jsonl", "--redis", broker, "--base-url", sim.base_url], tmp_path).returncode == 0
    kept = run_cli(["purge", "--redis", broker, "--batch", "batch"], tmp_path)
    assert kept.returncode == 1 and "kept batch batch: it has unfinished jobs" in kept.stderr
    status = json.loads(run_cli(["status", "batch", "--redis", broker, "--json"], tmp_path).stdout)
    assert status["counts"]["admitted"] == 2 and status["state"] == "open"


def test_resume_makes_unfinished_steps_due_now_and_says_how_many(tmp_path: Path, sim_factory: Any,
                                                               redis_server: Any) -> None:  # fmt: skip
    client = redis.Redis(unix_socket_path=redis_server.socket_path)
    client.flushall()
    sim = sim_factory()
    write_manifest(tmp_path, 3)
    broker = redis_server.broker_url
    assert run_cli(["submit", "batch.jsonl", "--redis", broker, "--base-url", sim.base_url,
                    "--max-in-flight", "2"], tmp_path).returncode == 0  # fmt: skip
    client.delete("wb:timers")  # what no move ever does: the jobs in the window have lost their steps
    resumed = run_cli(["resume", "batch", "--redis", broker], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "batch batch: 2 step(s) due now; the workers take it from here" in resumed.stdout
    assert client.zcard("wb:timers") == 2
    unknown = run_cli(["resume", "nope", "--redis", broker], tmp_path)
    assert unknown.returncode == 2 and "no batch 'nope'" in unknown.stderr
