"""The `wan-batch sim` command, run as a user runs it: a real process serving real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from runner.cli import main
from runner.simulator import ECHO_APP

SCRIPT = Path(sys.executable).parent / "wan-batch"
#: A shell starts background jobs with SIGINT ignored, and children inherit that; a terminal does not.
_AS_FROM_A_TERMINAL = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
_CREDENTIAL_VARIABLES = ("FAL_KEY", "WAN_BATCH_SIM_KEY", "WAN_BATCH_SIM_TOKEN", "WAN_BATCH_GATEWAY_TOKEN")
ECHO = f"{ECHO_APP}/cli"


@dataclass
class Served:
    base_url: str
    process: subprocess.Popen[str]
    #: stdout and stderr after the process stopped.
    output: str = ""


@contextmanager
def sim_process(args: list[str], stop_signal: signal.Signals = signal.SIGTERM,
                **env: str) -> Iterator[Served]:  # fmt: skip
    """`wan-batch sim --port 0 ARGS` with only `env`'s credentials; stopped by `stop_signal` on exit."""
    clean = {name: value for name, value in os.environ.items() if name not in _CREDENTIAL_VARIABLES}
    if stop_signal is signal.SIGINT:
        command = [sys.executable, "-c", _AS_FROM_A_TERMINAL + "from runner.cli import main; main()"]
    else:
        command = [str(SCRIPT)]
    process = subprocess.Popen([*command, "sim", "--port", "0", *args], env={**clean, **env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:"), process.communicate(timeout=10)
        served = Served(base_url, process)
        yield served
        process.send_signal(stop_signal)
        out, err = process.communicate(timeout=10)
        served.output = base_url + out + err
        assert process.returncode == 0, err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def post_echo(base_url: str, authorization: str) -> int:
    with httpx.Client(timeout=10) as client:
        return client.post(f"{base_url}/{ECHO}", json={}, headers={"Authorization": authorization}).status_code


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serves_until_interrupted_and_never_adopts_fal_key(stop_signal: signal.Signals) -> None:
    secret = "real-fal-key-4d1e"
    with sim_process(["--seed", "3"], stop_signal, FAL_KEY=secret) as served:
        with httpx.Client(timeout=10) as client:
            assert client.get(f"{served.base_url}/_stats").json()["submits"] == 0
        # The user's real key is not the simulator's: any key is accepted, as with no key set.
        assert post_echo(served.base_url, "Key anything-at-all") == 200
        assert post_echo(served.base_url, f"Key {secret}") == 200
    assert "any Key or Bearer credential" in served.output
    assert secret not in served.output


def test_key_comes_from_its_own_variable() -> None:
    with sim_process([], WAN_BATCH_SIM_KEY="sim-key-77", FAL_KEY="real-fal-key-4d1e") as served:
        assert post_echo(served.base_url, "Key real-fal-key-4d1e") == 401
        assert post_echo(served.base_url, "Key sim-key-77") == 200
    assert "sim-key-77" not in served.output


def test_help_names_the_sims_own_key_variable() -> None:
    shown = CliRunner().invoke(main, ["sim", "--help"], terminal_width=200).output
    assert "WAN_BATCH_SIM_KEY" in shown
    assert "read from FAL_KEY" not in shown


def test_help_names_the_pricing_api_and_its_option() -> None:
    shown = CliRunner().invoke(main, ["sim", "--help"], terminal_width=200).output
    assert "<url>/v1/models/pricing" in shown
    assert "--price ENDPOINT=USD[/UNIT]" in shown


def test_fault_flags_inject_exactly_the_limit() -> None:
    args = ["--fault-429", "1", "--fault-limit", "1", "--concurrency", "1", "--run-time", "fixed:0.05"]
    with sim_process(args) as served, httpx.Client(timeout=10, headers={"Authorization": "Key k"}) as client:
        refused = client.post(f"{served.base_url}/{ECHO}", json={"n": 1})
        assert (refused.status_code, refused.headers["Retry-After"]) == (429, "1")
        submitted = client.post(f"{served.base_url}/{ECHO}", json={"n": 1})
        assert submitted.status_code == 200
        codes: list[int] = []
        deadline = time.monotonic() + 10
        while not codes or codes[-1] == 202:
            assert time.monotonic() < deadline, "the request did not complete"
            codes.append(client.get(submitted.json()["status_url"]).status_code)
        assert 429 not in codes and client.get(submitted.json()["response_url"]).status_code == 200
        stats = client.get(f"{served.base_url}/_stats").json()
    assert stats["faults"]["rate_limit_429"] == 1
    assert (stats["submits"], stats["max_in_progress"]) == (1, 1)
    assert stats["requests"][submitted.json()["request_id"]]["run_s"] == pytest.approx(0.05)
