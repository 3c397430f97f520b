"""docker-compose.yml is checked without Docker: parsed, and each service's command started here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
BIN = Path(sys.executable).parent


def test_the_services_are_there() -> None:
    assert set(SERVICES) == {"redis", "worker", "beat", "flower"}


def test_redis_persists_to_a_volume_and_never_evicts() -> None:
    redis = SERVICES["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    [volume] = redis["volumes"]
    assert volume.split(":")[0] in COMPOSE["volumes"] and volume.endswith(":/data")


@pytest.mark.parametrize("name", ["worker", "beat", "flower"])
def test_the_project_services_build_this_project_and_share_redis_and_data(name: str) -> None:
    service = SERVICES[name]
    assert service["build"] == "."
    assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert "redis" in service["depends_on"]
    assert {v.split(":")[1] for v in service["volumes"]} == {"/data/manifests", "/data/out"}


def test_no_secret_is_written_in_the_compose_file() -> None:
    for name in ("worker", "beat", "flower"):
        environment = SERVICES[name]["environment"]
        for key in ("FAL_KEY", "WAN_BATCH_GATEWAY_TOKEN"):
            assert re.fullmatch(r"\$\{" + key + r":-\}", environment[key]), "taken from the environment or .env"


def test_the_dockerfile_installs_the_project_with_flower() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY jobs ./jobs" in text and "COPY runner ./runner" in text
    assert 'pip install ".[monitor]"' in text


@pytest.mark.parametrize("name", ["worker", "beat", "flower"])
def test_each_command_starts_outside_docker(name: str) -> None:
    """The service's own command, from this environment's bin, asked for --help instead of running."""
    program, *rest = SERVICES[name]["command"]
    executable = BIN / program
    assert executable.exists() or shutil.which(program)
    options_at = next((i for i, word in enumerate(rest) if word.startswith("--")), len(rest))
    subcommand = rest[:options_at]  # e.g. ["worker"], or ["-A", "runner.tasks", "flower"]
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run([str(executable), *subcommand, "--help"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout
