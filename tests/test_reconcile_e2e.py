"""Lost submits through the real CLI and the simulator over HTTP: found in fal's history, or proven absent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jobs.endpoints import WAN25_I2I
from runner.simulator import FaultRates
from tests.test_run_e2e import assert_report_matches_disk, report_of, run_cli, write_manifest


def run_against(sim: Any, tmp_path: Path, *extra: str) -> Any:
    manifest = write_manifest(tmp_path, 3)
    return run_cli(["run", str(manifest), "--base-url", sim.base_url, "--api-url", f"{sim.base_url}/v1",
                    "--out", str(tmp_path / "out"), "--quiet", *extra], tmp_path)  # fmt: skip


def test_a_lost_answer_of_a_created_request_is_adopted(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(faults=FaultRates(lost_submit_response=1.0), fault_limit=1)
    done = run_against(sim, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    stats = sim.stats()
    assert stats["faults"]["lost_submit_response"] == 1 and stats["history_calls"] >= 1
    assert stats["submits"] == 3 and stats["duplicate_submits"] == 0, "nothing was submitted again"
    rows = report_of(tmp_path / "out")["rows"]
    adopted = [r for r in rows if r["reconciled"]]
    assert len(adopted) == 1 and adopted[0]["reconciled"] == f"attempt 1: adopted {adopted[0]['request_id']}"
    sidecar = json.loads((tmp_path / "out" / "batch" / "jobs" / f"{adopted[0]['job_id']}.json").read_text())
    assert [r["outcome"] for r in sidecar["reconciled"]] == ["adopted"] and sidecar["attempts"] == 1
    assert report_of(tmp_path / "out")["summary"]["reconciled"] == {"adopted": 1}
    assert_report_matches_disk(tmp_path / "out")


def test_a_lost_submit_fal_never_had_is_sent_again_only_after_its_deadline(tmp_path: Path, sim_factory: Any) -> None:
    # The first call the simulator gets, the first submit, loses its connection before anything is created (the run
    # asks no price of it: --price names the unit).
    sim = sim_factory(faults=FaultRates(drop_connection=1.0), fault_limit=1)
    done = run_against(sim, tmp_path, "--start-timeout-s", "3", "--price", f"{WAN25_I2I}=0.05/image")
    assert done.returncode == 0, done.stdout + done.stderr
    stats = sim.stats()
    assert stats["submits"] == 3 and sorted(stats["submits_per_input"].values()) == [1, 1, 1]
    rows = report_of(tmp_path / "out")["rows"]
    [absent] = [r for r in rows if r["reconciled"]]
    assert absent["reconciled"] == "attempt 1: absent" and absent["attempts"] == 2
    sidecar = json.loads((tmp_path / "out" / "batch" / "jobs" / f"{absent['job_id']}.json").read_text())
    lost = sidecar["reconciled"][0]
    # Proven absent no sooner than its start deadline (3 s) + the history's lag (2 s) + the clock skew (1 s).
    assert lost["resolved_at"] - lost["sent_at"] >= 6.0
    [request] = [r for r in stats["requests"].values() if r["submitted_at"] >= lost["sent_at"] + 6.0]
    assert request is stats["requests"][absent["request_id"]], "its one request at fal came after the deadline"
    assert [a["error_type"] for a in sidecar["history"]] == ["submit_lost"]
