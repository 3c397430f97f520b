"""`wan-batch run --sim --serve --webhook-url`: fal's webhooks end the jobs, with no status call."""

from __future__ import annotations

from pathlib import Path

import redis

from runner.embedded.server import EmbeddedRedis
from runner.ledger.metrics import Metrics
from tests.test_run_e2e import report_of, run_cli, write_manifest


def counted(out: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with EmbeddedRedis(out / ".wan-batch" / "redis") as server:
        client = redis.Redis(unix_socket_path=server.socket_path)
        found = {(name, tuple(sorted(labels.items()))): n for name, labels, n in Metrics(client).counters()}
        client.close()
    return found


def test_a_run_with_webhooks_collects_every_job_without_polling(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, jobs=6)
    done = run_cli(["run", str(path), "--sim", "--out", str(tmp_path / "out"), "--serve", "0", "--webhook-url",
                    "/fal/webhook", "--quiet", "--sim-run-time", "uniform:0.5,1"], tmp_path, FAL_KEY="")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert report_of(tmp_path / "out")["summary"]["counts"]["succeeded"] == 6
    found = counted(tmp_path / "out")
    assert not [key for key in found if key[0] == "fal_calls" and ("call", "status") in key[1]], "no status call"
    assert found[("webhooks", (("outcome", "collect_now"),))] == 6


def test_a_webhook_url_must_be_a_url_or_a_path_on_serve(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, jobs=1)
    no_serve = run_cli(["run", str(path), "--sim", "--out", str(tmp_path / "a"), "--webhook-url", "/fal/webhook"],
                       tmp_path)  # fmt: skip
    assert no_serve.returncode == 2 and "a path is taken on the address of --serve" in no_serve.stderr
    not_http = run_cli(["run", str(path), "--sim", "--out", str(tmp_path / "b"), "--webhook-url", "ftp://x/y"],
                       tmp_path)  # fmt: skip
    assert not_http.returncode == 2 and "--webhook-url: give an http(s) URL" in not_http.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "batch").exists(), "nothing ran"
