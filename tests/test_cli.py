"""The `wan-batch validate` command, called as a user calls it."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.endpoints import WAN25_I2I
from runner.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in {".csv", ".jsonl", ".yaml"})


@pytest.mark.parametrize("manifest", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(manifest: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(manifest)])
    assert result.exit_code == 0, result.output
    assert f"{manifest}: ok, " in result.output


def test_errors_exit_1_and_name_file_line_and_field(tmp_path: Path) -> None:
    manifest = tmp_path / "rows.csv"
    manifest.write_text("prompt,image_urls,num_images\nok,https://x.test/a.png,1\nbad,missing.png,9\n")
    result = CliRunner().invoke(main, ["validate", str(manifest), "--endpoint", WAN25_I2I])
    assert result.exit_code == 1
    assert f"{manifest}:3: num_images: Input should be less than or equal to 4 (got '9')" in result.stderr
    assert f"{manifest}:3: image_urls[0]: no such file: {tmp_path / 'missing.png'}" in result.stderr
    assert f"{manifest}: 2 error(s), 0 warning(s); nothing would be submitted" in result.stdout
    assert "Traceback" not in result.output


def test_summary_counts_jobs_per_endpoint_expansion_and_warnings(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        f"endpoint: {WAN25_I2I}\nmatrix: {{seed: [1, 2, 3]}}\njobs:\n"
        "- {prompt: a, image_urls: [https://x.test/1, https://x.test/2, https://x.test/3]}\n"
        "- {prompt: b, image_urls: https://x.test/1, seed: 4}\n"
    )
    result = CliRunner().invoke(main, ["validate", str(manifest)])
    assert result.exit_code == 0
    assert f"{manifest}: ok, 4 job(s) from 2 row(s), 1 warning(s)" in result.stdout
    assert "matrix: expanded 1 row(s) into 3 job(s)" in result.stdout
    assert f"{WAN25_I2I}: 4" in result.stdout
    assert "warning: image_urls: 3 images given" in result.stderr


def test_json_output_for_scripts(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"prompt": "a", "image_urls": ["https://x.test/1"]}\n{"prompt": 3}\n')
    result = CliRunner().invoke(main, ["validate", "--json", str(manifest), "--endpoint", WAN25_I2I])
    report = json.loads(result.stdout)
    assert result.exit_code == 1
    assert report["ok"] is False and report["jobs"] == 1 and report["records"] == 2
    assert {(e["line"], e["field"]) for e in report["errors"]} == {(2, "prompt"), (2, "image_urls")}


def test_the_image_size_cap_is_an_option(tmp_path: Path, make_image) -> None:  # type: ignore[no-untyped-def]
    make_image("big.bmp", size=(600, 600), fmt="BMP")  # ~1 MiB
    manifest = tmp_path / "m.csv"
    manifest.write_text("prompt,image_urls\nx,big.bmp\n")
    args = ["validate", str(manifest), "--endpoint", WAN25_I2I]
    assert CliRunner().invoke(main, [*args, "--max-image-mb", "2"]).exit_code == 0
    small = CliRunner().invoke(main, [*args, "--max-image-mb", "0.5"])
    assert small.exit_code == 1
    assert "more than the cap of 524,288 (--max-image-mb)" in small.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["validate", "nope.csv"], "does not exist"), (["validate"], "Missing argument"), (["frobnicate"], "No such command"),
     (["worker", "--api-url", "api.example/v1"], "--api-url: give a plain http(s) URL, or none"),
     (["worker", "--api-url", "http://u:secret-pw@127.0.0.1/v1"], "--api-url: give a plain http(s) URL, or none")],
)  # fmt: skip
def test_bad_usage_exits_2(args: list[str], fragment: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert fragment in result.output and "secret-pw" not in result.output


def test_console_script_runs(tmp_path: Path) -> None:
    """The installed `wan-batch` entry point, in a subprocess, on binary garbage."""
    manifest = tmp_path / "junk.yaml"
    manifest.write_bytes(b"\x00\xff\xfe{{[[")
    script = Path(sys.executable).parent / "wan-batch"
    done = subprocess.run([str(script), "validate", str(manifest)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"{manifest}:1: not UTF-8" in done.stderr
    assert "Traceback" not in done.stderr


# --- stopping a run: a signal only notes the stop; the run raises it where stopping is safe -------------------


def test_a_signal_during_a_finalizer_still_stops_the_run() -> None:
    """Raised from a handler, a KeyboardInterrupt inside a `__del__` would be swallowed; noted, it is not."""
    from runner.cli.batch import _stop_on_signals

    class Finalized:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGINT)

    with _stop_on_signals() as check:
        Finalized()  # dropped at once: its finalizer runs here, as one may inside any library call
        with pytest.raises(KeyboardInterrupt) as caught:
            check()
    assert type(caught.value) is KeyboardInterrupt


def test_sigterm_is_told_apart_and_a_second_signal_changes_nothing() -> None:
    from runner.cli.batch import _stop_on_signals, _Terminated

    with _stop_on_signals() as check:
        check()  # nothing asked yet
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(_Terminated):
            check()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "handlers are put back"


def test_a_signal_ignored_from_the_start_stays_ignored() -> None:
    """A background job (started with `&` by a non-interactive shell) ignores SIGINT: the run does too."""
    from runner.cli.batch import _stop_on_signals

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _stop_on_signals() as check:
            signal.raise_signal(signal.SIGINT)
            check()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
