"""Local images through fal storage (issue 13): uploaded once, where the manifest is; jobs send URLs.

Real runs of the command line against the simulator, whose counters say what reached it.
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from PIL import Image

from jobs.endpoints import WAN25_I2I
from runner.embedded.server import EmbeddedRedis
from runner.ledger.keys import Keys
from runner.simulator import FaultRates, SimConfig, run_simulator
from tests.test_run_e2e import KEY, WAN_BATCH, assert_report_matches_disk, cli_env, report_of, run_cli, write_manifest

COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]


def write_matrix(folder: Path, name: str = "grid.yaml") -> Path:
    """3 local images x 8 seeds = 24 jobs."""
    (folder / "in").mkdir(parents=True, exist_ok=True)
    for n, colour in enumerate(COLOURS):
        Image.new("RGB", (64 + n, 48), colour).save(folder / "in" / f"{n}.png")
    images = "\n".join(f"    - [in/{n}.png]" for n in range(len(COLOURS)))
    path = folder / name
    path.write_text(f"endpoint: {WAN25_I2I}\ndefaults:\n  prompt: a storm\n  image_size: square\n"
                    f"matrix:\n  seed: [1, 2, 3, 4, 5, 6, 7, 8]\n  image_urls:\n{images}\n")  # fmt: skip
    return path


def run_into(out: Path, manifest: Path, sim: Any, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    args = ["run", str(manifest), "--base-url", sim.base_url, "--out", str(out), "--max-in-flight", "24", *extra]
    return run_cli(args, manifest.parent, **env)


def test_a_matrix_uploads_each_image_once_and_sends_no_data_uri(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(concurrency=8, run_time="fixed:0.05")
    manifest = write_matrix(tmp_path)
    done = run_into(tmp_path / "out", manifest, sim)
    assert done.returncode == 0, done.stderr + done.stdout
    stats = sim.stats()
    assert (stats["uploads"], stats["submits"], stats["submits_with_data_uri"]) == (3, 24, 0)
    assert stats["storage_fetches"] == 24, "each request read its input from fal storage"
    assert stats["upload_bytes"] == sum((tmp_path / "in" / f"{n}.png").stat().st_size for n in range(3))
    assert "local images: 3 distinct, 3 uploaded to fal storage" in done.stdout
    with (tmp_path / "out" / "grid" / "report.csv").open() as handle:
        sizes = {row["input_images"]: row["input_sizes"] for row in csv.DictReader(handle)}
    assert sizes == {f"in/{n}.png": f"{64 + n}x48" for n in range(3)}
    assert_report_matches_disk(tmp_path / "out", "grid")

    again = run_into(tmp_path / "out", manifest, sim)
    assert again.returncode == 0 and sim.stats()["uploads"] == 3, "a rerun uploads nothing"
    other = shutil.copy(manifest, tmp_path / "other.yaml")
    elsewhere = run_into(tmp_path / "out", Path(other), sim)
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert "local images: 3 distinct, 0 uploaded to fal storage (0.0 MB), 3 already there" in elsewhere.stdout
    assert sim.stats()["uploads"] == 3 and sim.stats()["submits"] == 48, "another batch reuses the uploads"


def test_an_expired_upload_is_uploaded_again(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(run_time="fixed:0.05")
    manifest = write_manifest(tmp_path, 2)
    assert run_into(tmp_path / "out", manifest, sim).returncode == 0
    assert sim.stats()["uploads"] == 1
    with EmbeddedRedis(tmp_path / "out" / ".wan-batch" / "redis") as server:  # what the run used, stopped now
        client = redis.Redis.from_url(server.url)
        uploads = client.keys(f"{Keys().prefix}:upload:*")
        assert len(uploads) == 1 and client.ttl(uploads[0]) > 6 * 86400 - 7200 - 60, "kept while fal keeps it"
        client.pexpire(uploads[0], 1)  # as if its days had passed
        deadline = time.monotonic() + 10
        while client.exists(uploads[0]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not client.exists(uploads[0])
        client.close()
    other = shutil.copy(manifest, tmp_path / "other.jsonl")
    done = run_into(tmp_path / "out", Path(other), sim)
    assert done.returncode == 0, done.stderr
    assert sim.stats()["uploads"] == 2 and "1 uploaded to fal storage" in done.stdout


def test_a_gateway_batch_sends_its_images_inline(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(token="gateway-token", run_time="fixed:0.05")
    manifest = write_manifest(tmp_path, 3)
    done = run_into(tmp_path / "out", manifest, sim, FAL_KEY="", WAN_BATCH_GATEWAY_TOKEN="gateway-token")
    assert done.returncode == 0, done.stderr
    stats = sim.stats()
    assert (stats["storage_tokens"], stats["uploads"], stats["submits_with_data_uri"]) == (0, 0, 3)
    asked = run_into(tmp_path / "out2", manifest, sim, "--images", "upload", FAL_KEY="",
                     WAN_BATCH_GATEWAY_TOKEN="gateway-token")  # fmt: skip
    assert asked.returncode == 1 and sim.stats()["submits"] == 3, "a gateway's token cannot upload: nothing sent"
    assert (f"{manifest}: image_urls[0]: in/a.png: upload to fal storage failed: storage token: HTTP 403: Gateway"
            " tokens cannot upload to fal storage; check FAL_KEY, or send the images inline (--images inline) (on 3"
            " lines: 1, 2, 3)") in asked.stderr.splitlines()
    assert "gateway-token" not in asked.stderr + asked.stdout


def test_an_upload_that_keeps_failing_is_an_error_of_its_rows_and_nothing_is_sent(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(faults=FaultRates(upload_5xx=1.0))
    manifest = write_manifest(tmp_path, 2)
    done = run_into(tmp_path / "out", manifest, sim)
    assert done.returncode == 1, done.stdout
    assert (f"{manifest}: image_urls[0]: in/a.png: upload to fal storage failed: upload: HTTP 503 (on 2 lines: 1,"
            " 2)") in done.stderr.splitlines()
    assert f"{manifest}: not run; nothing was submitted" in done.stderr
    assert sim.stats()["submits"] == 0 and sim.stats()["uploads"] == 0
    assert not (tmp_path / "out" / "batch" / "report.csv").exists(), "nothing recorded"


def test_an_upload_that_fails_in_passing_is_tried_again(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(faults=FaultRates(upload_5xx=1.0), fault_limit=2, run_time="fixed:0.05")
    done = run_into(tmp_path / "out", write_manifest(tmp_path, 2), sim)
    assert done.returncode == 0, done.stderr
    assert sim.stats()["uploads"] == 1 and sim.stats()["submits_with_data_uri"] == 0


def test_workers_elsewhere_need_no_input_folder(tmp_path: Path, sim_factory: Any, redis_server: Any) -> None:
    """`submit` uploads where the manifest is; a worker that cannot see the images runs the jobs all the same."""
    redis.Redis(unix_socket_path=redis_server.socket_path).flushall()
    sim = sim_factory(run_time="fixed:0.05")
    manifest = write_manifest(tmp_path / "here", 3)
    submitted = run_cli(["submit", str(manifest), "--redis", redis_server.broker_url, "--base-url", sim.base_url,
                         "--out", str(tmp_path / "out")], tmp_path)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    shutil.rmtree(tmp_path / "here")  # the worker's machine has no such folder
    env = cli_env(REDIS_URL=redis_server.broker_url)
    worker = subprocess.Popen([WAN_BATCH, "worker", "--concurrency", "4", "--loglevel", "WARNING"], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        watched = run_cli(["watch", "batch", "--redis", redis_server.broker_url], tmp_path, timeout_s=90)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    assert watched.returncode == 0, watched.stderr + watched.stdout
    status = json.loads(run_cli(["status", "batch", "--redis", redis_server.broker_url, "--json"], tmp_path).stdout)
    assert status["counts"]["succeeded"] == 3
    assert (sim.stats()["uploads"], sim.stats()["submits_with_data_uri"]) == (1, 0)
    assert report_of(tmp_path / "out")["summary"]["counts"]["succeeded"] == 3


def test_a_file_name_that_is_not_ascii_uploads_and_a_lifetime_shorter_than_the_start_deadline_is_refused(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(run_time="fixed:0.05")
    (tmp_path / "in").mkdir()
    Image.new("RGB", (20, 10), (9, 9, 9)).save(tmp_path / "in" / "café ü.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"endpoint": WAN25_I2I, "prompt": "p", "image_urls": ["in/café ü.png"]}) + "\n")
    done = run_into(tmp_path / "out", manifest, sim)
    assert done.returncode == 0, done.stderr + done.stdout
    assert sim.stats()["uploads"] == 1 and sim.stats()["submits_with_data_uri"] == 0
    short = run_into(tmp_path / "out2", manifest, sim, "--priority", "low", "--upload-ttl", "2h")
    assert short.returncode == 2 and "--upload-ttl: give at least 2.5h" in short.stderr
    assert sim.stats()["uploads"] == 1 and sim.stats()["submits"] == 1, "nothing uploaded or sent"


def test_a_simulator_restarted_on_the_same_port_is_another_storage(tmp_path: Path) -> None:
    """Its files went with the one before: uploads are kept per storage (its token's CDN URL), not per host."""
    manifest = write_manifest(tmp_path, 1)
    config = SimConfig(key=KEY, run_time="fixed:0.05")
    with run_simulator(config) as first:
        assert run_into(tmp_path / "out", manifest, first).returncode == 0
        port = urlsplit(first.base_url).port
    with run_simulator(config.model_copy(update={"port": port})) as second:
        other = shutil.copy(manifest, tmp_path / "other.jsonl")
        done = run_into(tmp_path / "out", Path(other), second)
        assert done.returncode == 0, done.stderr + done.stdout
        assert second.stats()["uploads"] == 1 and second.stats()["storage_fetches"] == 1
