"""The progress bar as a terminal shows it, and the failure summary of a run."""

from __future__ import annotations

import pytest
from rich.console import Console

from jobs.job import Job
from jobs.record import JobRecord
from jobs.status import JobStatus
from runner.cli.progress import ProgressBar, failure_lines

S = JobStatus


def terminal() -> Console:
    return Console(record=True, force_terminal=True, width=160)


def counts(**by_status: int) -> dict[JobStatus, int]:
    return {status: by_status.get(status.name.lower(), 0) for status in JobStatus}


def test_the_bar_shows_every_count() -> None:
    console = terminal()
    with ProgressBar(12, enabled=True, console=console) as bar:
        bar.update(counts(succeeded=3, failed=1, admitted=1, queued=2, running=1, waiting=4), in_flight=4)
    last = console.export_text().splitlines()[-1]
    assert "4/12" in last, "succeeded and failed jobs are done"
    assert "3 done 1 failed 4 in flight (2 queued at fal, 1 running) 4 waiting" in last


def test_the_total_follows_the_ledger() -> None:
    console = terminal()
    with ProgressBar(5, enabled=True, console=console) as bar:
        bar.update(counts(succeeded=2, cancelled=1, waiting=4), in_flight=0)
    assert "3/7" in console.export_text().splitlines()[-1]


def test_a_disabled_bar_prints_only_notes_unwrapped() -> None:
    console = Console(record=True, width=40)
    with ProgressBar(3, enabled=False, console=console) as bar:
        bar.update(counts(succeeded=1, waiting=2), in_flight=0)
        bar.note("no job has changed status for 60 s: start `wan-batch worker --redis URL` [sic]")
    assert console.export_text() == "no job has changed status for 60 s: start `wan-batch worker --redis URL` [sic]\n"


def test_a_note_prints_above_a_live_bar() -> None:
    console = terminal()
    with ProgressBar(2, enabled=True, console=console) as bar:
        bar.note("a hint")
        bar.update(counts(running=1, waiting=1), in_flight=1)
    text = console.export_text()
    assert "a hint" in text
    assert "1 in flight (0 queued at fal, 1 running) 1 waiting" in text.splitlines()[-1]


def record(job_id: str, status: JobStatus, error_type: str | None = None, message: str | None = None) -> JobRecord:
    row = int(job_id.removeprefix("j"))
    job = Job(job_id, "fal-ai/x", {"prompt": "p"}, "0" * 64, "m.jsonl", row, row)
    return JobRecord(job, status=status, error_type=error_type, error_message=message)


OK = record("j0", S.SUCCEEDED)


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([], []),
        ([OK, record("j1", S.CANCELLED, "cancelled", "stopped")], []),
        (
            [OK, record("j1", S.FAILED, "http_422", "bad size")],
            ["  http_422: 1 job(s)", "    j1 (row 1): bad size"],
        ),
        (
            [record("j1", S.FAILED, "a", "x"), record("j2", S.FAILED, "b", "y"), record("j3", S.FAILED, "b", "z")],
            ["  b: 2 job(s)", "    j2 (row 2): y", "    j3 (row 3): z", "  a: 1 job(s)", "    j1 (row 1): x"],
        ),
        (
            [record("j1", S.FAILED)],
            ["  unknown: 1 job(s)", "    j1 (row 1): "],
        ),
        (
            [record(f"j{n}", S.FAILED, "transport", f"m{n}") for n in range(1, 6)],
            ["  transport: 5 job(s)", "    j1 (row 1): m1", "    j2 (row 2): m2", "    j3 (row 3): m3",
             "    ... and 2 more (see report.csv)"],
        ),
        (
            [record("j1", S.FAILED, "long", "word " * 60 + "; check fal's dashboard")],
            ["  long: 1 job(s)", "    j1 (row 1): " + "word " * 35 + "…; check fal's dashboard"],
        ),
    ],
    ids=["none", "no-failures", "one", "biggest-group-first", "no-error-type", "capped-per-type", "long-message"],
)  # fmt: skip
def test_failure_lines(records: list[JobRecord], expected: list[str]) -> None:
    assert failure_lines(records) == expected


def test_failure_lines_per_type_is_a_parameter() -> None:
    failed = [record(f"j{n}", S.FAILED, "t", "m") for n in range(1, 3)]
    assert failure_lines(failed, per_type=1) == ["  t: 2 job(s)", "    j1 (row 1): m", "    ... and 1 more (see report.csv)"]
