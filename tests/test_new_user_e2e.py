"""What a new user trips over, through the real CLI (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis

from runner.simulator import FaultRates
from tests.test_run_e2e import report_of, run_cli, write_manifest


def test_rows_skipped_as_invalid_are_in_the_report_and_the_summary(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory()
    manifest = write_manifest(tmp_path, 2)
    rows = manifest.read_text().splitlines()
    bad = json.loads(rows[1])
    bad["num_images"] = 99
    manifest.write_text(rows[0] + "\n" + json.dumps(bad) + "\n")
    args = ["run", str(manifest), "--base-url", sim.base_url, "--out", str(tmp_path / "out")]
    refused = run_cli([*args, "--quiet"], tmp_path)
    assert refused.returncode == 1 and "pass --skip-invalid" in refused.stderr
    done = run_cli([*args, "--quiet", "--skip-invalid"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "skipped: 1 invalid row(s) (--skip-invalid)" in done.stdout
    report = report_of(tmp_path / "out")
    assert report["summary"]["invalid_rows"] == 1 and sim.stats()["submits"] == 1
    [invalid] = [row for row in report["rows"] if row["status"] == "invalid"]
    assert invalid["error_message"].startswith(f"{manifest}:2: num_images: ")
    assert "invalid" in (tmp_path / "out" / "batch" / "report.csv").read_text()
    manifest.write_text(json.dumps(bad) + "\n")  # every row invalid: the hint does not repeat what was done
    nothing = run_cli([*args, "--quiet", "--skip-invalid"], tmp_path)
    assert nothing.returncode == 1 and "pass --skip-invalid" not in nothing.stderr
    assert "not run; fix the errors above" in nothing.stderr


def test_retry_of_an_error_type_no_job_has_names_the_ones_it_has(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(faults=FaultRates(model_error=1.0), fault_limit=1)
    manifest = write_manifest(tmp_path, 2)
    ran = run_cli(["run", str(manifest), "--base-url", sim.base_url, "--out", "out", "--quiet", "--max-attempts", "1"],
                  tmp_path)  # fmt: skip
    assert ran.returncode == 1
    typo = run_cli(["retry", "batch", "--out", "out", "--error-type", "runner_server_eror"], tmp_path)
    assert typo.returncode == 1
    assert "no job failed as runner_server_eror; its error types: runner_server_error (1)" in typo.stderr
    right = run_cli(["retry", "batch", "--out", "out", "--error-type", "runner_server_error"], tmp_path)
    assert right.returncode == 0 and "1 job(s) queued" in right.stdout


def test_an_unreachable_redis_is_named_without_its_password(tmp_path: Path) -> None:
    for url in ("redis://user:s3cret-pw@127.0.0.1:1/0", "redis://127.0.0.1:1/0?password=s3cret-pw"):
        done = run_cli(["status", "x", "--redis", url], tmp_path)
        assert done.returncode == 1
        assert "cannot reach Redis at redis://127.0.0.1:1/0: ConnectionError" in done.stderr
        assert "s3cret-pw" not in done.stderr and "Traceback" not in done.stderr


def test_submit_needs_no_credential_on_the_machine_that_submits(
    tmp_path: Path, sim_factory: Any, redis_server: Any
) -> None:
    redis.Redis(unix_socket_path=redis_server.socket_path).flushall()
    sim = sim_factory()
    write_manifest(tmp_path, 2)
    done = run_cli(["submit", "batch.jsonl", "--redis", redis_server.broker_url], tmp_path, FAL_KEY="")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "batch" and "the workers use their own credential" in done.stderr
    assert f"local images are sent inline: every worker must read them in {tmp_path.resolve()}" in done.stderr
    status = json.loads(run_cli(["status", "batch", "--redis", redis_server.broker_url, "--json"], tmp_path).stdout)
    assert status["counts"]["admitted"] + status["counts"]["waiting"] == 2
    # Whose queue another URL is cannot be told without a credential: the workers' key must not go there blind.
    gateway = run_cli(["submit", "batch.jsonl", "--redis", redis_server.broker_url, "--base-url", sim.base_url,
                       "--batch-id", "other"], tmp_path, FAL_KEY="")  # fmt: skip
    assert gateway.returncode == 2 and "with --base-url, say whose queue it is" in gateway.stderr
    unreachable = run_cli(["submit", "batch.jsonl", "--redis", "redis://127.0.0.1:1/0"], tmp_path, FAL_KEY="")
    assert unreachable.returncode == 1 and "cannot reach Redis at redis://127.0.0.1:1/0" in unreachable.stderr


def test_a_trial_runs_a_few_jobs_and_the_same_command_without_it_the_rest(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory()
    manifest = write_manifest(tmp_path, 6)
    args = ["run", str(manifest), "--base-url", sim.base_url, "--out", str(tmp_path / "out"), "--quiet"]
    tried = run_cli([*args, "--sample", "2"], tmp_path)
    assert tried.returncode == 0, tried.stderr
    assert "trying a sample of 2 of 6 job(s)" in tried.stderr and sim.stats()["submits"] == 2
    again = run_cli([*args, "--sample", "2"], tmp_path)
    assert again.returncode == 0 and sim.stats()["submits"] == 2, "the same sample: nothing new"
    rest = run_cli(args, tmp_path)
    assert rest.returncode == 0 and sim.stats()["submits"] == 6 and sim.stats()["duplicate_submits"] == 0
    assert len(report_of(tmp_path / "out")["rows"]) == 6


def test_export_writes_the_failed_rows_as_a_manifest_that_validates(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(faults=FaultRates(model_error=1.0), fault_limit=1)
    manifest = write_manifest(tmp_path, 3)
    ran = run_cli(["run", str(manifest), "--base-url", sim.base_url, "--out", "out", "--quiet", "--max-attempts", "1"],
                  tmp_path)  # fmt: skip
    assert ran.returncode == 1
    elsewhere = tmp_path / "fixes"
    elsewhere.mkdir()
    for kind in ("jsonl", "csv"):
        target = elsewhere / f"failed.{kind}"
        exported = run_cli(["export", "batch", "--out", "out", "--format", kind, "--output", str(target)], tmp_path)
        assert exported.returncode == 0 and "1 job(s) written" in exported.stderr
        checked = run_cli(["validate", str(target), "--json"], elsewhere)  # its local image found from anywhere
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert json.loads(checked.stdout)["jobs"] == 1
    [row] = [json.loads(line) for line in (elsewhere / "failed.jsonl").read_text().splitlines()]
    failed = [r for r in report_of(tmp_path / "out")["rows"] if r["status"] == "failed"]
    assert row["id"] == failed[0]["job_id"] and Path(row["image_urls"][0]).is_absolute()


def test_validate_check_urls_names_the_image_urls_that_do_not_serve_an_image(tmp_path: Path) -> None:
    from tests.test_simulator_inputs import ImageServer

    images = ImageServer()
    try:
        rows = [{"endpoint": "fal-ai/wan-25-preview/image-to-image", "prompt": f"p{n}", "image_urls": [url]}
                for n, url in enumerate([images.url("/ok.png"), images.url("/missing.png"), images.url("/ok.png")])]
        manifest = tmp_path / "urls.jsonl"
        manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
        plain = run_cli(["validate", str(manifest)], tmp_path)
        assert plain.returncode == 0 and images.hits() == 0, "no URL is asked for unless told"
        checked = run_cli(["validate", str(manifest), "--check-urls"], tmp_path)
    finally:
        images.close()
    assert checked.returncode == 1
    assert f"{images.url('/missing.png')}: HTTP 404" in checked.stderr and "/ok.png:" not in checked.stderr
    assert "2 image URL(s) checked, 1 not reachable as images" in checked.stderr


def test_an_endpoint_close_to_a_known_one_runs_only_when_allowed(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory()
    manifest = write_manifest(tmp_path, 2, endpoint="fal-ai/wan-26-preview/image-to-image")
    args = ["run", str(manifest), "--base-url", sim.base_url, "--out", str(tmp_path / "out"), "--quiet"]
    refused = run_cli(args, tmp_path)
    assert refused.returncode == 1 and "did you mean" in refused.stderr and "--allow-endpoint" in refused.stderr
    assert "on 2 lines" in refused.stderr or refused.stderr.count("did you mean") == 1, "told once, not per row"
    allowed = run_cli([*args, "--allow-endpoint", "fal-ai/wan-26-preview/image-to-image"], tmp_path)
    assert allowed.returncode == 1, "fal has no such app"
    assert "unknown_endpoint: 2 job(s)" in allowed.stdout and sim.stats()["submits"] == 0
    exported = run_cli(["export", "batch", "--out", str(tmp_path / "out"), "--format", "csv", "--output",
                        str(tmp_path / "again.csv")], tmp_path)  # fmt: skip
    assert exported.returncode == 0
    checked = run_cli(["validate", str(tmp_path / "again.csv")], tmp_path)
    assert checked.returncode == 0, "exported as it was run: its endpoint confirmed as meant (pass_through)"
