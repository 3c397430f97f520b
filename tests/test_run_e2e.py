"""`wan-batch run` end to end: the real CLI in a subprocess, real Redis, a real Celery worker,
and the simulator of fal in this process, so its counts span reruns and kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from jobs.endpoints import WAN22_I2I, WAN25_I2I
from runner.simulator import FaultRates

ROOT = Path(__file__).resolve().parent.parent
WAN_BATCH = str(Path(sys.executable).parent / "wan-batch")
KEY = "sim-key-for-tests"


#: The simulators of these tests run on this machine, their history a second behind: no more is waited for.
SIM_HISTORY = {"WAN_BATCH_RECONCILE__HISTORY_LAG_S": "2", "WAN_BATCH_RECONCILE__CLOCK_SKEW_S": "1"}
#: fal's Platform API for a test that names none (`--api-url`): nothing listens there, so no test reaches fal.
NO_FAL_API = "http://127.0.0.1:9/v1"


def cli_env(**extra: str) -> dict[str, str]:
    """This environment without the developer's Redis and credentials, with the simulator's key."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "FAL_KEY", "WAN_BATCH_GATEWAY_TOKEN", "FAL_API_URL")
           and not k.startswith("WAN_BATCH_RECONCILE__")}  # fmt: skip
    return {**env, "FAL_KEY": KEY, "FAL_API_URL": NO_FAL_API, **SIM_HISTORY, **extra}


def run_cli(args: list[str], cwd: Path, timeout_s: float = 90, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WAN_BATCH, *args], cwd=cwd, env=cli_env(**env), capture_output=True, text=True,
                          timeout=timeout_s)  # fmt: skip


def start_as_a_terminal_would(args: list[str], **popen: Any) -> subprocess.Popen[str]:
    """Start a command with SIGINT at its default, as a shell's foreground job has it.

    pytest itself may run with SIGINT ignored (started in the background by a
    shell that is not interactive), and a child inherits an ignored signal.
    A signal this process handles is reset to its default by exec.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(args, text=True, **popen)
    finally:
        signal.signal(signal.SIGINT, previous)


def write_manifest(folder: Path, jobs: int, endpoint: str = WAN25_I2I) -> Path:
    (folder / "in").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (200, 80, 20)).save(folder / "in" / "a.png")
    lines = []
    for n in range(jobs):
        if endpoint == WAN22_I2I:
            row = {"id": f"job{n}", "prompt": f"prompt {n}", "image_url": "in/a.png", "strength": 0.5}
        else:
            row = {"id": f"job{n}", "prompt": f"prompt {n}", "image_urls": ["in/a.png"], "seed": n, "image_size": "square"}
        lines.append(json.dumps({"endpoint": endpoint, **row}))
    path = folder / "batch.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def report_of(out: Path, batch: str = "batch") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / batch / "report.json").read_text())
    return data


def assert_report_matches_disk(out: Path, batch: str = "batch") -> None:
    report = report_of(out, batch)
    for row in report["rows"]:
        if row["status"] != "succeeded":
            continue
        path = out / batch / row["output_path"]
        with Image.open(path) as image:
            assert image.size == (row["width"], row["height"]), row
        sidecar = json.loads((out / batch / "jobs" / f"{row['name']}.json").read_text())
        assert sidecar["request_id"] == row["request_id"]
        assert row["output_path"] in [o["path"] for o in sidecar["outputs"]]
    images_on_disk = sorted(p.name for p in (out / batch / "images").iterdir())
    assert images_on_disk == sorted(Path(r["output_path"]).name for r in report["rows"] if r["output_path"])


def test_examples_run_on_the_embedded_default_with_the_built_in_simulator(tmp_path: Path) -> None:
    """The README's main job: both endpoints, local images, no Redis, no key."""
    for example in ("mixed.jsonl", "wan22.csv"):
        done = run_cli(["run", str(ROOT / "examples" / example), "--sim", "--out", str(tmp_path / "out"), "--quiet"],
                       tmp_path, FAL_KEY="")  # fmt: skip
        assert done.returncode == 0, done.stderr + done.stdout
        batch = Path(example).stem
        report = report_of(tmp_path / "out", batch)
        assert report["summary"]["counts"]["succeeded"] == 3
        assert_report_matches_disk(tmp_path / "out", batch)
    rows = report_of(tmp_path / "out", "mixed")["rows"]
    assert {r["endpoint"] for r in rows} == {WAN22_I2I, WAN25_I2I}
    assert len(rows) == 4, "w25-2 asks for two images"


def test_a_rerun_submits_nothing_new(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory()
    manifest = write_manifest(tmp_path, 6)
    args = ["run", str(manifest), "--base-url", sim.base_url, "--out", str(tmp_path / "out"), "--quiet"]
    first = run_cli(args, tmp_path)
    assert first.returncode == 0, first.stderr
    assert sim.stats()["submits"] == 6
    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr
    assert sim.stats()["submits"] == 6
    assert "resumed: 6 job(s) were already in the ledger" in again.stdout
    assert_report_matches_disk(tmp_path / "out")


def test_sigkill_mid_run_then_rerun_pays_for_nothing_twice(tmp_path: Path, sim_factory: Any) -> None:
    """Killed while fal has requests whose answers had not come: the rerun finds them in fal's history."""
    sim = sim_factory(concurrency=3, run_time="fixed:0.6", submit_latency_s=2.0)
    manifest = write_manifest(tmp_path, 12)
    args = [WAN_BATCH, "run", str(manifest), "--base-url", sim.base_url, "--api-url", f"{sim.base_url}/v1",
            "--start-timeout-s", "5", "--out", str(tmp_path / "out"), "--quiet", "--max-in-flight", "4"]  # fmt: skip
    env = cli_env()
    process = subprocess.Popen(args, cwd=tmp_path, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while sim.stats()["submits"] < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the run, its worker threads and its redis-server
    process.wait()
    killed_at = sim.stats()["submits"]
    assert 5 <= killed_at < 12, "killed mid-batch, the answer of the latest submits still on its way"

    done = run_cli(args[1:], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    stats = sim.stats()
    assert stats["duplicate_submits"] == 0 and stats["submits"] == 12
    assert sorted(stats["submits_per_input"].values()) == [1] * 12, "every input at fal exactly once"
    rows = report_of(tmp_path / "out")["rows"]
    assert [r["status"] for r in rows] == ["succeeded"] * 12
    adopted = [r for r in rows if (r["reconciled"] or "").startswith("attempt 1: adopted")]
    assert adopted, "the submits the kill cut off were found in fal's history and followed"
    assert all(r["request_id"] in r["reconciled"] for r in adopted)
    assert_report_matches_disk(tmp_path / "out")


def test_transient_faults_are_recovered(tmp_path: Path, sim_factory: Any) -> None:
    faults = FaultRates(proxy_5xx=0.3, rate_limit_429=0.2, model_error=0.3, truncated_download=0.3)
    sim = sim_factory(faults=faults, retry_after_s=0.05)
    manifest = write_manifest(tmp_path, 8)
    done = run_cli(["run", str(manifest), "--base-url", sim.base_url, "--out", str(tmp_path / "out"), "--quiet",
                    "--max-attempts", "6"], tmp_path)  # fmt: skip
    stats = sim.stats()
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(stats["faults"][kind] > 0 for kind in ("proxy_5xx", "rate_limit_429", "model_error", "truncated_download"))
    report = report_of(tmp_path / "out")
    assert report["summary"]["counts"]["succeeded"] == 8
    assert report["summary"]["attempts"] == 8 + stats["faults"]["model_error"], "a model error costs one new attempt"
    assert_report_matches_disk(tmp_path / "out")


def test_permanent_errors_are_reported_with_their_detail(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(faults=FaultRates(model_error=1.0))
    manifest = write_manifest(tmp_path, 2)
    with manifest.open("a") as handle:
        handle.write(json.dumps({"id": "nowhere", "endpoint": "fal-ai/no-such-app", "prompt": "x"}) + "\n")
    done = run_cli(["run", str(manifest), "--base-url", sim.base_url, "--out", str(tmp_path / "out"),
                    "--max-attempts", "2"], tmp_path)  # fmt: skip
    assert done.returncode == 1
    assert "runner_server_error: 2 job(s)" in done.stdout
    assert "unknown_endpoint: 1 job(s)" in done.stdout
    rows = {r["job_id"]: r for r in report_of(tmp_path / "out")["rows"]}
    assert rows["job0"]["attempts"] == 2 and rows["job0"]["error_type"] == "runner_server_error"
    assert "no-such-app" in rows["nowhere"]["error_message"]
    assert rows["nowhere"]["attempts"] == 1
    assert KEY not in (tmp_path / "out" / "batch" / "report.json").read_text()


def test_a_manifest_with_errors_submits_nothing(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory()
    manifest = write_manifest(tmp_path, 3)
    with manifest.open("a") as handle:
        handle.write(json.dumps({"endpoint": WAN25_I2I, "prompt": "", "image_urls": ["in/a.png"]}) + "\n")
    args = ["run", str(manifest), "--base-url", sim.base_url, "--out", str(tmp_path / "out"), "--quiet"]
    refused = run_cli(args, tmp_path)
    assert refused.returncode == 1
    assert f"{manifest}:4: prompt: String should have at least 1 character" in refused.stderr
    assert sim.stats()["submits"] == 0
    skipped = run_cli([*args, "--skip-invalid"], tmp_path)
    assert skipped.returncode == 0, skipped.stderr
    assert sim.stats()["submits"] == 3


def test_missing_credential_is_a_usage_error(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, 1)
    done = run_cli(["run", str(manifest), "--out", str(tmp_path / "out")], tmp_path, FAL_KEY="")
    assert done.returncode == 2
    assert "no credential: set FAL_KEY" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("worker_command", ["wan-batch", "celery"])
def test_shared_redis_with_a_separate_worker(
    tmp_path: Path, sim_factory: Any, redis_server: Any, worker_command: str
) -> None:
    """The same tasks run by a worker in another process, through a shared Redis."""
    import redis

    redis.Redis(unix_socket_path=redis_server.socket_path).flushall()
    sim = sim_factory()
    write_manifest(tmp_path, 5, endpoint=WAN22_I2I)
    env = cli_env(REDIS_URL=redis_server.broker_url)
    command = {
        "wan-batch": [WAN_BATCH, "worker", "--redis", redis_server.broker_url, "--concurrency", "4", "--loglevel", "WARNING"],
        "celery": [str(Path(sys.executable).parent / "celery"), "-A", "runner.tasks", "worker", "-P", "threads", "-c", "4",
                   "--loglevel", "WARNING"],
    }[worker_command]  # fmt: skip
    # The worker runs in another directory; the manifest's local images must still be found.
    worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        done = run_cli(["run", "batch.jsonl", "--redis", redis_server.broker_url, "--base-url", sim.base_url,
                        "--out", "out", "--quiet"], tmp_path)  # fmt: skip
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    assert done.returncode == 0, done.stderr
    assert sim.stats()["submits"] == 5
    assert_report_matches_disk(tmp_path / "out")


def test_report_command_and_json_output(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory()
    manifest = write_manifest(tmp_path, 3)
    out = tmp_path / "out"
    done = run_cli(["run", str(manifest), "--base-url", sim.base_url, "--out", str(out), "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["counts"]["succeeded"] == 3 and summary["images_written"] == 3
    assert summary["report_csv"] == str(out / "batch" / "report.csv")
    (out / "batch" / "report.csv").unlink()
    (out / "batch" / "report.json").unlink()
    again = run_cli(["report", str(out / "batch")], tmp_path)
    assert again.returncode == 0, again.stderr
    assert "batch batch: 3 succeeded; 3 image(s)" in again.stdout
    assert_report_matches_disk(out)
    missing = run_cli(["report", str(tmp_path)], tmp_path)
    assert missing.returncode == 2
    assert "is not a batch folder" in missing.stderr


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--base-url", "http://user:pw-in-the-url-123@127.0.0.1:1"], "--base-url: base_url must not hold"),
        (["--base-url", "http://127.0.0.1:1/?key=pw-in-the-url-123"], "--base-url: base_url must not hold"),
        (["--base-url", "queue.example/pw-in-the-url-123"], "--base-url: base_url must be an http(s) URL"),
        (["--sim", "--redis", "redis://127.0.0.1:1/0"], "--sim cannot be used with --redis"),
        (["--sim", "--api-url", "http://user:pw-in-the-url-123@127.0.0.1:1/v1"], "--api-url: give a plain http(s) URL"),
        (["--sim", "--api-url", "api.example/pw-in-the-url-123"], "--api-url: give a plain http(s) URL"),
    ],
    ids=["user-info", "query", "no-scheme", "sim-with-redis", "api-url-user-info", "api-url-no-scheme"],
)  # fmt: skip
def test_bad_usage_is_refused_before_anything_is_recorded(tmp_path: Path, extra: list[str], fragment: str) -> None:
    manifest = write_manifest(tmp_path, 1)
    out = tmp_path / "out"
    done = run_cli(["run", str(manifest), "--out", str(out), "--quiet", *extra], tmp_path, timeout_s=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert fragment in done.stderr
    assert "pw-in-the-url-123" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert not [p for p in files_under(out) if b"pw-in-the-url-123" in p.read_bytes()]


def test_one_run_at_a_time_per_output_folder(tmp_path: Path, sim_factory: Any) -> None:
    """A second run into the folder is refused; a report may be written while the first goes on."""
    sim = sim_factory(concurrency=1, run_time="fixed:0.5")
    manifest = write_manifest(tmp_path, 3)
    out = tmp_path / "out"
    args = ["run", str(manifest), "--base-url", sim.base_url, "--out", str(out), "--quiet", "--max-in-flight", "1"]
    env = cli_env()
    first = subprocess.Popen([WAN_BATCH, *args], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while sim.stats()["submits"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        second = run_cli(args, tmp_path)
        during = run_cli(["report", str(out / "batch")], tmp_path)
    finally:
        stdout, stderr = first.communicate(timeout=90)
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"{out} is in use by another wan-batch run or report" in second.stderr
    assert during.returncode == 0, during.stderr
    assert first.returncode == 0, stdout + stderr
    assert sim.stats()["submits"] == 3
    assert_report_matches_disk(out)


def test_a_batch_is_not_rerun_against_another_provider(tmp_path: Path, sim_factory: Any) -> None:
    first_sim, other_sim = sim_factory(), sim_factory()
    manifest = write_manifest(tmp_path, 2)
    args = ["run", str(manifest), "--out", str(tmp_path / "out"), "--quiet"]
    assert run_cli([*args, "--base-url", first_sim.base_url], tmp_path).returncode == 0
    moved = run_cli([*args, "--base-url", other_sim.base_url], tmp_path)
    assert moved.returncode == 2, moved.stdout + moved.stderr
    assert f"was sent to {first_sim.base_url} (FAL_KEY)" in moved.stderr
    assert f"cannot be followed at {other_sim.base_url} (FAL_KEY)" in moved.stderr
    assert KEY not in moved.stdout + moved.stderr
    assert other_sim.stats()["submits"] == 0


def test_a_sim_batch_reruns_with_sim(tmp_path: Path) -> None:
    """The simulator's port changes every run; its batches resume all the same."""
    manifest = write_manifest(tmp_path, 2)
    args = ["run", str(manifest), "--sim", "--sim-run-time", "fixed:0.1", "--out", str(tmp_path / "out"), "--quiet"]
    assert run_cli(args, tmp_path, FAL_KEY="").returncode == 0
    again = run_cli(args, tmp_path, FAL_KEY="")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resumed: 2 job(s) were already in the ledger" in again.stdout


def test_a_shared_redis_without_workers_gets_a_hint(tmp_path: Path, sim_factory: Any, redis_server: Any) -> None:
    import queue
    import threading

    import redis

    client = redis.Redis(unix_socket_path=redis_server.socket_path)
    client.flushall()
    sim = sim_factory()
    manifest = write_manifest(tmp_path, 2)
    env = cli_env()
    command = [WAN_BATCH, "run", str(manifest), "--redis", redis_server.broker_url, "--base-url", sim.base_url,
               "--out", str(tmp_path / "out"), "--quiet", "--stall-hint-s", "0.3"]  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr or ()], daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        while not any("is a worker running?" in line for line in seen):
            seen.append(lines.get(timeout=60))
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    finally:
        process.kill()
        client.flushall()
        client.close()
    reader.join(timeout=10)
    while not lines.empty():
        seen.append(lines.get())
    stderr = "".join(seen)
    assert "no job has changed status for 0.3 s: is a worker running? Start one with `wan-batch worker --redis URL`" in stderr
    assert stderr.count("is a worker running?") == 1
    assert process.returncode == 143, stderr
    assert sim.stats()["submits"] == 0


@pytest.mark.parametrize(
    ("signum", "to_group", "exit_code", "said"),
    [
        # A terminal's Ctrl-C: SIGINT to the whole foreground process group.
        (signal.SIGINT, True, 130, "interrupted: requests already at fal are kept"),
        # A service manager or `kill`: SIGTERM to the run alone.
        (signal.SIGTERM, False, 143, "terminated: requests already at fal are kept; run the same command again"),
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_a_stopped_run_stops_cleanly_and_a_rerun_finishes(
    tmp_path: Path, sim_factory: Any, signum: int, to_group: bool, exit_code: int, said: str
) -> None:
    sim = sim_factory(concurrency=2, run_time="fixed:1.0")
    manifest = write_manifest(tmp_path, 8)
    out = tmp_path / "out"
    args = ["run", str(manifest), "--base-url", sim.base_url, "--out", str(out), "--quiet", "--max-in-flight", "2"]
    env = cli_env()
    process = start_as_a_terminal_would([WAN_BATCH, *args], cwd=tmp_path, env=env, start_new_session=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 60
    while sim.stats()["submits"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    if to_group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    _, stderr = process.communicate(timeout=90)
    assert process.returncode == exit_code, stderr
    assert said in stderr
    assert "Traceback" not in stderr, stderr
    assert not (out / ".wan-batch" / "redis" / "redis.sock").exists(), "the private Redis was shut down"
    assert (out / "batch" / "report.json").exists(), "a report is written when stopped too"
    assert sim.stats()["submits"] < 8, stderr

    done = run_cli(args, tmp_path)
    stats = sim.stats()
    context = f"first run: {stderr}\nrerun: {done.stdout}{done.stderr}\nstats: {stats['submits']} submits"
    assert done.returncode == 0, context
    assert stats["duplicate_submits"] == 0, context
    assert stats["submits"] == 8, context
    assert report_of(out)["summary"]["counts"]["succeeded"] == 8, context


def test_matrix_variants_are_files_named_by_their_values_and_old_batches_keep_their_ids(tmp_path: Path) -> None:
    """`storm@seed7_0.png`, not `storm-c2cec3b2_0.png`; the report and sidecars say each job's matrix values; a
    batch recorded by a version that named files by id reruns with nothing sent again and its files as they were."""
    import csv

    manifest = str(ROOT / "examples" / "wan25-matrix.yaml")
    old, new = tmp_path / "old", tmp_path / "new"
    done = run_cli(["run", manifest, "--sim", "--out", str(new), "--quiet"], tmp_path, FAL_KEY="")
    assert done.returncode == 0, done.stderr + done.stdout
    folder = new / "wan25-matrix"
    assert sorted(p.name for p in (folder / "images").iterdir()) == [
        "fused_0.png", "storm-wide@seed42_0.png", "storm-wide@seed7_0.png", "storm@seed42_0.png", "storm@seed7_0.png"]
    sidecar = json.loads((folder / "jobs" / "storm@seed7.json").read_text())
    assert sidecar["matrix"] == {"seed": 7} and sidecar["name"] == "storm@seed7"
    assert sidecar["job_id"].startswith("storm-") and sidecar["job_id"] != "storm@seed7", "its id is as it was"
    with (folder / "report.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["job_id"].split("-")[0], r["matrix.seed"]) for r in rows] == [
        ("storm", "7"), ("storm", "42"), ("storm", "7"), ("storm", "42"), ("fused", "")]
    assert list(rows[0]).index("matrix.seed") == list(rows[0]).index("estimated_cost_usd") + 1, "after the standard"
    assert_report_matches_disk(new, "wan25-matrix")

    before_names = "import jobs.manifest as m; m.variant_name = lambda *_: None; from runner.cli import main; main()"
    first = subprocess.run([sys.executable, "-c", before_names, "run", manifest, "--sim", "--out", str(old), "--quiet"],
                           cwd=tmp_path, env=cli_env(FAL_KEY=""), capture_output=True, text=True, timeout=90)  # fmt: skip
    assert first.returncode == 0, first.stderr
    images = sorted(p.name for p in (old / "wan25-matrix" / "images").iterdir())
    ids = sorted(r["job_id"] for r in report_of(old, "wan25-matrix")["rows"])
    assert images == sorted(f"{job_id}_0.png" for job_id in ids), "files named by id, as before"
    again = run_cli(["run", manifest, "--sim", "--out", str(old)], tmp_path, FAL_KEY="")
    assert again.returncode == 0, again.stderr
    assert "resumed: 5 job(s) were already in the ledger" in again.stdout, "the same ids: nothing sent again"
    assert report_of(old, "wan25-matrix")["summary"]["attempts"] == 5
    assert sorted(p.name for p in (old / "wan25-matrix" / "images").iterdir()) == images
    assert_report_matches_disk(old, "wan25-matrix")
