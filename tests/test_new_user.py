"""What a new user trips over, answered in one clear line before anything starts (issue 12)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from jobs.report import brief, invalid_rows, summarize
from runner.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "wan22.csv")


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["--out", "{tmp}/a-file/out"], {"FAL_KEY": "k"}, "--out {tmp}/a-file/out: cannot write there: Not a directory"),
        (["--sim", "--base-url", "http://127.0.0.1:9"], {}, "--sim cannot be used with --base-url"),
        ([], {"FAL_KEY": "", "WAN_BATCH_GATEWAY_TOKEN": ""}, "no credential: set FAL_KEY"),
        (["--sim"], {"WAN_BATCH_RECONCILE__HISTORY_LAG_S": "soon"},
         "WAN_BATCH_RECONCILE__HISTORY_LAG_S: Input should be a valid number"),
    ],
    ids=["unwritable-out", "sim-and-base-url", "no-credential", "bad-setting"],
)  # fmt: skip
def test_a_run_that_cannot_go_is_refused_in_one_line_before_anything_shows(
    tmp_path: Path, args: list[str], env: dict[str, str], fragment: str
) -> None:
    (tmp_path / "a-file").write_text("a file where a folder was meant")
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    out = ["--out", str(tmp_path / "out")] if "--out" not in args else []
    result = CliRunner().invoke(main, ["run", EXAMPLE, *out, *args], env=env)
    assert result.exit_code == 2, result.output
    assert fragment.replace("{tmp}", str(tmp_path)) in result.stderr
    assert "Traceback" not in result.output and "jobs" not in result.stderr, "no progress bar, no traceback"
    assert sorted(p.name for p in tmp_path.iterdir()) in (["a-file"], ["a-file", "out"]), "nothing else made"
    assert not (tmp_path / "out" / "wan22").exists(), "nothing recorded"


def test_an_interrupt_before_a_command_handles_signals_is_a_clean_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("runner.cli.batch.load_manifest", interrupted)
    result = CliRunner().invoke(main, ["validate", EXAMPLE])
    assert result.exit_code == 130 and "interrupted" in result.stderr and "Traceback" not in result.output


def test_brief_cuts_between_words_and_keeps_the_advice() -> None:
    message = ("submit http://h/fal-ai/wan: RemoteProtocolError: Server disconnected without sending a response;"
               " check fal's dashboard, and retry it if it did not run")  # fmt: skip
    short = brief(message, 100)
    assert len(short) <= 100 and short.endswith("; check fal's dashboard, and retry it if it did not run")
    assert short.startswith("submit http://h/fal-ai/wan …; ")
    assert brief("one two three four five", 12) == "one two …"
    assert brief("short", 10) == "short"


def test_rows_skipped_as_invalid_are_report_rows_and_counted() -> None:
    skipped = [[{"file": "m.csv", "line": 3, "field": "prompt", "message": "Field required", "severity": "error"},
                {"file": "m.csv", "line": 3, "field": None, "message": "bad row", "severity": "error"}]]  # fmt: skip
    [row] = invalid_rows(skipped)
    assert (row["status"], row["error_type"]) == ("invalid", "invalid_row")
    assert row["error_message"] == "m.csv:3: prompt: Field required; bad row"
    assert summarize([], None, invalid=1)["invalid_rows"] == 1


def test_a_trial_takes_the_first_jobs_or_a_stable_spread_sample() -> None:
    from jobs.job import Job
    from jobs.selection import first_jobs, sample_jobs

    jobs = [Job(f"row{n}", "fal-ai/x/y", {"prompt": str(n)}, f"f{n}", "m.csv", n + 2, n + 1) for n in range(1000)]
    assert [j.id for j in first_jobs(jobs, 3)] == ["row0", "row1", "row2"]
    sample = sample_jobs(jobs, 10)
    assert len(sample) == 10 and sample == sample_jobs(list(jobs), 10), "the same jobs on every rerun"
    assert [j.row for j in sample] == sorted(j.row for j in sample), "in manifest order"
    assert sample[-1].row - sample[0].row > 500, "spread over the manifest, not its head"
    assert {j.id for j in sample_jobs(jobs, 5)} <= {j.id for j in sample}, "a smaller sample is part of a larger one"


def test_a_sidecar_holds_the_input_once_and_its_times_in_iso_8601_too(tmp_path: Path) -> None:
    import json

    from jobs.record import JobRecord
    from jobs.status import JobStatus
    from runner.steps.folder import BatchFolder
    from tests.test_record import JOB

    record = JobRecord(JOB, JobStatus.SUCCEEDED, attempts=1, request_id="r", submitted_at=1_700_000_000.0,
                       started_at=1_700_000_001.5, completed_at=1_700_000_003.0, finished_at=1_700_000_004.0)  # fmt: skip
    data = json.loads(BatchFolder(tmp_path).write_sidecar(record).read_text())
    assert json.dumps(data).count('"image_urls"') == 1, "the input is written once"
    assert data["input"] == JOB.input and data["job_id"] == JOB.id and data["row"] == JOB.row and "job" not in data
    assert data["submitted_at"] == 1_700_000_000.0 and data["submitted_at_iso"] == "2023-11-14T22:13:20.000Z"
    assert data["started_at_iso"] == "2023-11-14T22:13:21.500Z" and "queued_at_iso" not in data


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    import click

    if isinstance(command, click.Group):
        return [found for name, sub in command.commands.items() for found in _commands(sub, (*path, name))]
    return [(path, command)]


@pytest.mark.parametrize(("path", "command"), _commands(main), ids=lambda p: " ".join(p) if isinstance(p, tuple) else "")
def test_every_option_of_every_command_says_what_it_does(path: tuple[str, ...], command: Any) -> None:
    import click

    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert command.help, f"{' '.join(path)} has no help"
    silent = [p.opts[0] for p in command.params if isinstance(p, click.Option) and not p.hidden and not p.help]
    assert silent == [], f"wan-batch {' '.join(path)}: options without help"
    assert "[required]" not in result.output or "--redis" not in result.output, "REDIS_URL may give --redis"


def test_submit_and_schedule_add_take_the_input_options_run_takes() -> None:
    import click

    def names(*path: str) -> set[str]:
        command = dict(_commands(main))[path]
        return {p.name for p in command.params if isinstance(p, click.Option) and p.name}

    shared = {"max_image_mb", "max_in_flight", "max_attempts", "endpoint", "skip_invalid", "priority", "api_url",
              "start_timeout_s", "base_url"}  # fmt: skip
    assert shared <= names("run") and shared <= names("submit") and shared <= names("schedule", "add")


def test_a_ctrl_c_while_the_command_line_loads_is_a_clean_exit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import builtins

    from runner.__main__ import main as console_script

    real_import = builtins.__import__

    def interrupted_while_loading(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "runner.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted_while_loading)
    with pytest.raises(SystemExit) as stopped:
        console_script()
    assert stopped.value.code == 130 and capsys.readouterr().err == "\ninterrupted\n"


def test_a_trial_of_a_batch_with_other_unfinished_jobs_is_refused(redis_client: Any, tmp_path: Path) -> None:
    from jobs.batch import Batch
    from jobs.errors import UsageError
    from jobs.job import Job
    from runner.batches.request import RunRequest
    from runner.batches.run import _check_trial
    from runner.ledger.batch_info import BatchInfo
    from runner.ledger.store import Ledger

    jobs = [Job(f"j{n}", "fal-ai/x/y", {"prompt": str(n)}, f"f{n}", "m.csv", n + 2, n + 1) for n in range(3)]
    ledger = Ledger(redis_client)
    ledger.save_batch(BatchInfo(id="m", manifest=str(tmp_path / "m.csv"), folder=str(tmp_path / "m"), created_at=1.0,
                                max_in_flight=2))  # fmt: skip
    ledger.sync_jobs("m", jobs, now=1.0)  # a full run was stopped: all three unfinished
    trial = RunRequest(manifest=tmp_path / "m.csv", limit=1)
    with pytest.raises(UsageError, match="has 2 unfinished job\\(s\\) beyond this trial"):
        _check_trial(ledger, trial, Batch("m.csv", jobs[:1], 3))
    _check_trial(ledger, RunRequest(manifest=tmp_path / "m.csv"), Batch("m.csv", jobs, 3))  # a full run: fine


def test_an_internal_error_is_one_line_exit_3_and_never_shows_a_credential(monkeypatch: pytest.MonkeyPatch,
                                                                          redis_server: Any) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("boom with key fal-secret-123 in it\nsecond line")

    monkeypatch.setattr("runner.batches.operations.list_batches", broken)
    result = CliRunner().invoke(main, ["batches", "--redis", redis_server.broker_url],
                                env={"FAL_KEY": "fal-secret-123"})  # fmt: skip
    assert result.exit_code == 3 and "Traceback" not in result.output
    assert result.stderr.strip() == ("internal error: RuntimeError: boom with key [redacted] in it; please report it"
                                     " (WAN_BATCH_TRACEBACK=1 shows where)")


def test_skip_invalid_never_runs_a_manifest_read_only_part_way(tmp_path: Path) -> None:
    """Rows after a byte that is not UTF-8 were never read, so they cannot be skipped and reported: none runs."""
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(Path(EXAMPLE).read_bytes() + b"\xff not text,https://x.test/a.png\n")
    result = CliRunner().invoke(main, ["run", str(manifest), "--sim", "--skip-invalid", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert f"{manifest}:" in result.stderr and "not UTF-8" in result.stderr
    assert f"{manifest}: not run; fix the errors above" in result.stderr
    assert not (tmp_path / "out" / "m").exists(), "no batch recorded"
