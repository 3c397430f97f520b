"""Cost end to end: the real CLI against the simulator's pricing API, a real Redis and real workers."""

from __future__ import annotations

import json
import signal
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis

from jobs.endpoints import WAN22_I2I, WAN25_I2I
from runner.simulator.config import DEFAULT_PRICES, SimPrice
from tests.test_operate_e2e import start_worker, wait_for
from tests.test_run_e2e import ROOT, report_of, run_cli, write_manifest

#: The simulator's price of Wan 2.5, unlike the built-in table's $0.05: a test that sees it knows fal's API was asked.
API_PRICES = {**DEFAULT_PRICES, WAN25_I2I: SimPrice(unit_price=Decimal("0.07"), unit="images")}


def mixed_manifest(folder: Path) -> Path:
    """Wan 2.5 rows of 1, 2, 3 and 4 images, and two Wan 2.2 rows."""
    rows = [{"endpoint": WAN25_I2I, "prompt": f"p{n}", "image_urls": ["https://cdn.example.test/a.png"],
             "num_images": n} for n in (1, 2, 3, 4)]  # fmt: skip
    rows += [{"endpoint": WAN22_I2I, "prompt": f"q{n}", "image_url": "https://cdn.example.test/a.png"} for n in (1, 2)]
    path = folder / "mixed.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def estimate_of(done: Any) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    cost: dict[str, Any] = json.loads(done.stdout)["cost"]
    return cost


def test_validate_estimates_a_mixed_manifest_at_fal_s_prices_as_a_hand_computation_does(
    tmp_path: Path, sim_factory: Any
) -> None:
    """10 images at the API's $0.07 and 2 at $0.04: $0.78; the API's price, not the table's, was used."""
    sim = sim_factory(prices=API_PRICES)
    manifest = mixed_manifest(tmp_path)
    cost = estimate_of(run_cli(["validate", str(manifest), "--api-url", f"{sim.base_url}/v1", "--json"], tmp_path))
    assert cost["estimated_cost_usd"] == 0.78 and cost["complete"] and cost["price_notes"] == []
    lines = {line["endpoint"]: line for line in cost["endpoints"]}
    assert (lines[WAN25_I2I]["quantity"], lines[WAN25_I2I]["unit_price_usd"], lines[WAN25_I2I]["unit"]) == (
        10, 0.07, "image")
    assert (lines[WAN25_I2I]["estimated_cost_usd"], lines[WAN22_I2I]["estimated_cost_usd"]) == (0.70, 0.08)
    assert {line["price_source"] for line in cost["endpoints"]} == {"fal pricing API"}
    assert sim.stats()["pricing_calls"] == 1, "both endpoints in one call"

    text = run_cli(["validate", str(manifest), "--api-url", f"{sim.base_url}/v1"], tmp_path)
    assert "estimated cost: $0.78 for 6 job(s), one attempt each" in text.stderr
    assert f"  {WAN25_I2I}: 4 job(s), 10 image(s) x $0.07/image = $0.70 (fal pricing API)" in text.stderr


def test_a_price_option_overrides_the_api_and_keeps_its_unit(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(prices=API_PRICES)
    cost = estimate_of(run_cli(["validate", str(mixed_manifest(tmp_path)), "--api-url", f"{sim.base_url}/v1",
                                "--price", f"{WAN25_I2I}=0.06", "--json"], tmp_path))  # fmt: skip
    lines = {line["endpoint"]: line for line in cost["endpoints"]}
    assert (lines[WAN25_I2I]["price_source"], lines[WAN25_I2I]["unit_price_usd"], lines[WAN25_I2I]["unit"]) == (
        "--price", 0.06, "image")
    assert lines[WAN22_I2I]["price_source"] == "fal pricing API"
    assert cost["estimated_cost_usd"] == 0.68


def test_without_a_key_validate_falls_back_to_the_built_in_table_and_says_so(tmp_path: Path) -> None:
    done = run_cli(["validate", str(mixed_manifest(tmp_path))], tmp_path, FAL_KEY="")
    assert done.returncode == 0, done.stderr
    assert "estimated cost: $0.50 for 6 job(s), one attempt each (of the jobs that have one)" in done.stderr
    assert "built-in table: fal.ai model pages, as of 2026-12-01" in done.stderr
    assert f"{WAN22_I2I}: 2 job(s): no known price; not counted: give --price" in done.stderr
    assert "note: no FAL_KEY here: prices from the built-in table" in done.stderr


def test_an_api_that_does_not_answer_falls_back_to_the_table_and_says_so(tmp_path: Path) -> None:
    cost = estimate_of(run_cli(["validate", str(mixed_manifest(tmp_path)), "--api-url", "http://127.0.0.1:9/v1",
                                "--json"], tmp_path))  # fmt: skip
    assert cost["estimated_cost_usd"] == 0.5 and not cost["complete"]
    assert cost["price_notes"][0].startswith("fal's pricing API did not answer (pricing http://127.0.0.1:9/v1")


def test_a_dry_run_prices_the_batch_and_sends_uploads_and_records_nothing(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(prices=API_PRICES)
    manifest = write_manifest(tmp_path, 6)  # local images: a real run would upload them first
    done = run_cli(["run", str(manifest), "--base-url", sim.base_url, "--api-url", f"{sim.base_url}/v1", "--out",
                    str(tmp_path / "out"), "--dry-run", "--max-cost", "0.20"], tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "estimated cost: $0.42 for 6 job(s), one attempt each" in done.stderr
    assert "cost cap: $0.20: about 2 of 6 job(s) fit; the rest would end budget_exceeded" in done.stderr
    assert "dry run: 6 job(s) priced; nothing was uploaded, recorded or sent" in done.stderr
    stats = sim.stats()
    assert (stats["submits"], stats["storage_tokens"], stats["uploads"], stats["pricing_calls"]) == (0, 0, 0, 1)
    assert not (tmp_path / "out").exists(), "no ledger, no folder"


def test_a_cap_of_ten_jobs_worth_on_thirty_jobs_with_three_workers_sends_exactly_ten(
    tmp_path: Path, sim_factory: Any, redis_server: Any
) -> None:
    """Three worker processes race for the budget; a retry with a higher cap sends the other twenty."""
    redis.Redis(unix_socket_path=redis_server.socket_path).flushall()
    sim = sim_factory(concurrency=4, run_time="fixed:0.2")  # Wan 2.5 at $0.05 an image
    write_manifest(tmp_path, 30)
    broker = redis_server.broker_url
    workers = [start_worker(tmp_path, broker) for _ in range(3)]
    try:
        submitted = run_cli(["submit", "batch.jsonl", "--redis", broker, "--base-url", sim.base_url, "--api-url",
                             f"{sim.base_url}/v1", "--max-in-flight", "12", "--max-cost", "0.50"], tmp_path)  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        assert "cost cap: $0.50: about 10 of 30 job(s) fit" in submitted.stderr
        wait_for(lambda: (tmp_path / "out" / "batch" / "report.json").exists(), timeout_s=90)
        summary = report_of(tmp_path / "out")["summary"]
        assert sim.stats()["submits"] == 10
        assert (summary["counts"]["succeeded"], summary["failures_by_error_type"]) == (10, {"budget_exceeded": 20})
        assert summary["estimated_cost_usd"] == 0.5
        assert (summary["cost"]["cap_usd"], summary["cost"]["budget_exceeded"]) == (0.5, 20)
        rows = report_of(tmp_path / "out")["rows"]
        assert sorted({(r["status"], r["estimated_cost_usd"]) for r in rows}) == [("failed", 0.0),
                                                                                  ("succeeded", 0.05)]
        retried = run_cli(["retry", "batch", "--redis", broker, "--error-type", "budget_exceeded", "--max-cost",
                           "1.50"], tmp_path)  # fmt: skip
        assert retried.returncode == 0, retried.stderr
        wait_for(lambda: report_of(tmp_path / "out")["summary"]["counts"]["succeeded"] == 30, timeout_s=90)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
    stats = sim.stats()
    assert (stats["submits"], stats["duplicate_submits"]) == (30, 0)
    assert report_of(tmp_path / "out")["summary"]["estimated_cost_usd"] == 1.5


def test_a_run_with_a_cap_says_what_it_spent_and_what_it_did_not_send(tmp_path: Path) -> None:
    """The README's example on the built-in simulator ($0.19 in all), with a cap that lets one or two jobs through."""
    done = run_cli(["run", str(ROOT / "examples" / "mixed.jsonl"), "--sim", "--out", str(tmp_path / "out"),
                    "--max-cost", "0.10", "--quiet"], tmp_path, FAL_KEY="")  # fmt: skip
    assert done.returncode == 1, done.stderr + done.stdout
    assert "estimated cost: $0.19 for 3 job(s), one attempt each" in done.stderr
    summary = report_of(tmp_path / "out", "mixed")["summary"]
    not_sent = summary["cost"]["budget_exceeded"]  # which jobs fit depends on which was sent first
    assert not_sent >= 1 and summary["counts"]["succeeded"] == 3 - not_sent
    assert 0.04 <= summary["estimated_cost_usd"] <= 0.10
    assert f"  estimated cost: ${summary['estimated_cost_usd']:.2f} (from the listed prices); cost cap $0.10;" \
        f" {not_sent} job(s) not sent for it (budget_exceeded: raise the cap and retry them)" in done.stdout

    run = ["run", str(ROOT / "examples" / "mixed.jsonl"), "--sim", "--out", str(tmp_path / "out"), "--quiet"]
    kept = run_cli(run, tmp_path, FAL_KEY="")  # a rerun keeps the batch's cap
    assert kept.returncode == 1 and "cost cap: $0.10 (its last run's; --max-cost none removes it)" in kept.stderr
    assert run_cli(["retry", "mixed", "--out", str(tmp_path / "out"), "--error-type", "budget_exceeded"],
                   tmp_path).returncode == 0  # fmt: skip
    uncapped = run_cli([*run, "--max-cost", "none"], tmp_path, FAL_KEY="")
    assert uncapped.returncode == 0, uncapped.stderr + uncapped.stdout
    summary = report_of(tmp_path / "out", "mixed")["summary"]
    assert (summary["counts"]["succeeded"], summary["estimated_cost_usd"], summary["cost"]["cap_usd"]) == (3, 0.19, None)
