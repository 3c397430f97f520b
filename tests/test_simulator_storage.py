"""The simulator's fal storage, over real HTTP on 127.0.0.1: tokens, uploads, their files, and inputs that name them."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image

from jobs.endpoints import WAN22_I2I
from runner.cli import main
from runner.simulator import FaultRates, ManualClock, RunningSimulator, SimConfig, run_simulator
from tests.test_simulator import AUTH, ECHO, KEY, png_data_uri, serve, submit, wait_completed
from tests.test_simulator_inputs import png_bytes, run_one

TOKEN_PATH = "/storage/auth/token?storage_type=fal-cdn-v3"
GATEWAY_TOKEN = "gateway-token"
PNG = png_bytes((30, 20))


@dataclass(frozen=True)
class Gate:
    """A simulator that takes KEY and GATEWAY_TOKEN, on a clock moved by hand, and a client without credentials."""

    sim: RunningSimulator
    client: httpx.Client
    clock: ManualClock


@pytest.fixture(scope="module")
def gate() -> Iterator[Gate]:
    """Shared by the tests of refused calls: none stores a file, and the clock moves only to expire a token."""
    clock = ManualClock()
    config = SimConfig(key=KEY, token=GATEWAY_TOKEN, storage_token_ttl_s=60)
    with run_simulator(config, clock) as sim, httpx.Client(timeout=10) as client:
        yield Gate(sim, client, clock)


def new_token(client: httpx.Client, sim: RunningSimulator, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = client.post(f"{sim.base_url}{TOKEN_PATH}", json={}, headers=headers)
    assert response.status_code == 200, response.text
    token: dict[str, Any] = response.json()
    return token


def upload(client: httpx.Client, token: dict[str, Any], data: bytes = PNG, name: str = "in.png",
           lifetime_s: int | None = None, content_type: str = "image/png") -> httpx.Response:  # fmt: skip
    headers = {"Authorization": f"{token['token_type']} {token['token']}", "Content-Type": content_type,
               "X-Fal-File-Name": name}  # fmt: skip
    if lifetime_s is not None:
        headers["X-Fal-Object-Lifecycle"] = json.dumps({"expiration_duration_seconds": lifetime_s})
    return client.post(f"{token['base_url']}/files/upload", content=data, headers=headers)


def uploaded_url(client: httpx.Client, sim: RunningSimulator, data: bytes = PNG, lifetime_s: int | None = None) -> str:
    response = upload(client, new_token(client, sim), data, lifetime_s=lifetime_s)
    assert response.status_code == 200, response.text
    url: str = response.json()["access_url"]
    return url


# --- tokens, uploads and their files -----------------------------------------


def test_a_token_uploads_a_file_served_as_sent() -> None:
    with serve(key=KEY, storage_token_ttl_s=600) as (sim, client):
        before = datetime.now(UTC)
        token = new_token(client, sim)
        assert token["token_type"] == "Bearer" and token["token"]
        assert re.fullmatch(re.escape(f"{sim.base_url}/cdn/") + "[0-9a-f]{8}", token["base_url"]), "this simulator's"
        expires_at = datetime.fromisoformat(token["expires_at"])
        assert expires_at.tzinfo is not None and 599 <= (expires_at - before).total_seconds() <= 601
        jpeg = b"\xff\xd8 not really a jpeg"
        response = upload(client, token, jpeg, name="my photo.jpg", content_type="image/jpeg")
        assert response.status_code == 200, response.text
        access_url = response.json()["access_url"]
        assert access_url.startswith(f"{token['base_url']}/files/") and access_url.endswith("/my%20photo.jpg")
        served = httpx.get(access_url)  # no credentials: a CDN URL is public
        assert (served.status_code, served.content, served.headers["Content-Type"]) == (200, jpeg, "image/jpeg")
        assert httpx.get(access_url.replace("my%20photo.jpg", "other.jpg")).status_code == 404
        stats = sim.stats()
        assert (stats["storage_tokens"], stats["uploads"], stats["upload_bytes"]) == (1, 1, len(jpeg))
        assert (stats["storage_fetches"], stats["stored_files"], stats["stored_bytes"]) == (1, 1, len(jpeg))
        assert stats["faults"]["upload_5xx"] == 0


def test_a_file_without_a_name_gets_one_for_its_type() -> None:
    with serve() as (sim, client):
        token = new_token(client, sim)
        headers = {"Authorization": f"Bearer {token['token']}", "Content-Type": "image/png"}
        access_url = client.post(f"{token['base_url']}/files/upload", content=PNG, headers=headers).json()["access_url"]
        assert access_url.endswith("/upload.png") and client.get(access_url).content == PNG


def test_the_lifecycle_header_expires_a_file_and_the_default_lifetime_the_others() -> None:
    clock = ManualClock()
    with serve(clock, storage_file_lifetime_s=100, storage_token_ttl_s=1000) as (sim, client):
        token = new_token(client, sim)
        short = upload(client, token, lifetime_s=10).json()["access_url"]
        default = upload(client, token).json()["access_url"]
        never_set = upload(client, token, lifetime_s=0).json()["access_url"]  # fal: 0 is no expiration set
        clock.advance(9.5)
        assert [client.get(url).status_code for url in (short, default, never_set)] == [200, 200, 200]
        clock.advance(0.5)
        assert [client.get(url).status_code for url in (short, default, never_set)] == [404, 200, 200]
        clock.advance(90)
        assert [client.get(url).status_code for url in (short, default, never_set)] == [404, 404, 404]
        assert client.get(short).json() == {"detail": "File not found"}
        assert (sim.stats()["storage_fetches"], sim.stats()["stored_files"]) == (5, 0)


def test_a_full_storage_refuses_uploads_and_keeps_every_live_one() -> None:
    with serve(storage_mb=2500 / 2**20) as (sim, client):
        token = new_token(client, sim)
        answers = [upload(client, token, bytes([n]) * 1000) for n in range(3)]
        assert [answer.status_code for answer in answers] == [200, 200, 507]
        assert "storage is full" in answers[2].json()["detail"]
        assert [client.get(answer.json()["access_url"]).status_code for answer in answers[:2]] == [200, 200]
        assert (sim.stats()["stored_files"], sim.stats()["stored_bytes"], sim.stats()["uploads"]) == (2, 2000, 2)


# --- who may upload ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "path", "status", "detail"),
    [
        (f"Bearer {GATEWAY_TOKEN}", TOKEN_PATH, 403, "Gateway tokens cannot upload to fal storage"),
        ("Bearer anything", TOKEN_PATH, 403, "Gateway tokens cannot upload to fal storage"),
        ("Key wrong:key", TOKEN_PATH, 401, "Invalid credentials"),
        (None, TOKEN_PATH, 401, "Missing or malformed Authorization header"),
        (f"Key {KEY}", "/storage/auth/token?storage_type=gcs", 400, "storage_type=fal-cdn-v3 only"),
        (f"Key {KEY}", "/storage/auth/token", 400, "storage_type=fal-cdn-v3 only"),
    ],
)
def test_the_token_endpoint_takes_the_fal_key_only(gate: Gate, authorization: str | None, path: str, status: int,
                                                   detail: str) -> None:  # fmt: skip
    tokens_before = gate.sim.stats()["storage_tokens"]
    headers = {"Authorization": authorization} if authorization else {}
    response = gate.client.post(f"{gate.sim.base_url}{path}", json={}, headers=headers)
    assert response.status_code == status and detail in response.json()["detail"]
    assert KEY not in response.text and GATEWAY_TOKEN not in response.text
    assert gate.sim.stats()["storage_tokens"] == tokens_before


@pytest.mark.parametrize(
    ("authorization", "detail"),
    [
        (None, "Missing or malformed Authorization header"),
        (f"Key {KEY}", "Missing or malformed Authorization header"),
        ("Bearer not-a-storage-token", "Invalid storage token"),
        ("expired", "Storage token expired"),
    ],
)
def test_an_upload_needs_a_storage_token_not_expired(gate: Gate, authorization: str | None, detail: str) -> None:
    token = new_token(gate.client, gate.sim, AUTH)
    if authorization == "expired":
        gate.clock.advance(60)
        authorization = f"Bearer {token['token']}"
    headers = {"Authorization": authorization} if authorization else {}
    response = gate.client.post(f"{token['base_url']}/files/upload", content=PNG, headers=headers)
    assert response.status_code == 401 and detail in response.json()["detail"]
    assert (gate.sim.stats()["uploads"], gate.sim.stats()["stored_files"]) == (0, 0)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", TOKEN_PATH, 405),
        ("GET", "/cdn/{instance}/files/upload", 405),
        ("PUT", "/cdn/{instance}/files/upload", 405),
        ("POST", "/cdn/{instance}/files/upload/multipart", 404),
        ("POST", "/cdn/anything", 404),
        ("GET", "/cdn/{instance}/files/0123/name.png", 404),
        ("POST", "/cdn/0badc0de/files/upload", 404),  # another simulator's CDN
    ],
)
def test_other_storage_calls_are_not_queue_calls(gate: Gate, method: str, path: str, status: int) -> None:
    instance = new_token(gate.client, gate.sim, AUTH)["base_url"].rsplit("/", 1)[1]
    url = f"{gate.sim.base_url}{path.replace('{instance}', instance)}"
    assert gate.client.request(method, url, headers=AUTH).status_code == status
    assert gate.sim.stats()["submits"] == 0


# --- inputs that name uploads --------------------------------------------------


def test_an_uploaded_input_is_fetched_and_the_output_derives_from_it() -> None:
    clock = ManualClock()
    with serve(clock, run_time="fixed:0") as (sim, client):
        url = uploaded_url(client, sim, png_bytes((300, 200)))
        result = run_one(sim, client, WAN22_I2I, {"image_url": url, "prompt": "p", "aspect_ratio": "auto"})
        assert result.status_code == 200, result.text
        image = result.json()["image"]
        assert (image["width"], image["height"]) == (1024, 683)  # the aspect of the upload, not the square of a guess
        assert Image.open(io.BytesIO(client.get(image["url"]).content)).size == (1024, 683)
        assert sim.stats()["storage_fetches"] == 1  # fetched at submit, as fal's runner fetches it


def test_an_expired_upload_as_input_fails_the_request_with_422() -> None:
    clock = ManualClock()
    with serve(clock, run_time="fixed:0") as (sim, client):
        url = uploaded_url(client, sim, lifetime_s=30)
        clock.advance(30)
        result = run_one(sim, client, WAN22_I2I, {"image_url": url, "prompt": "p"})
        assert result.status_code == 422, result.text
        [entry] = result.json()["detail"]
        assert (entry["loc"], entry["type"], entry["input"]) == (["body", "image_url"], "file_download_error", url)
        assert "HTTP 404" in entry["msg"] and sim.stats()["storage_fetches"] == 0


# --- counters and faults ------------------------------------------------------------


def test_counters_of_uploads_and_submits_are_exact() -> None:
    with serve(run_time="fixed:0.01") as (sim, client):
        first = new_token(client, sim)
        urls = [upload(client, first, png_bytes((8 + n, 8))).json()["access_url"] for n in range(3)]
        uploaded_bytes = sum(len(png_bytes((8 + n, 8))) for n in range(3))
        bodies = [json.dumps({"image_urls": [url], "prompt": f"job {n}"}).encode() for n, url in enumerate(urls)]
        bodies.append(json.dumps({"nested": {"images": ["https://x.test/a.png", png_data_uri((4, 4))]}}).encode())
        for body in bodies:
            response = client.post(f"{sim.base_url}/{ECHO}", content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 200, response.text
            wait_completed(client, response.json())
        refused = client.post(f"{sim.base_url}/{ECHO}", content=b"[1, 2]")  # no request: not counted
        assert refused.status_code == 400
        stats = sim.stats()
        assert (stats["storage_tokens"], stats["uploads"], stats["upload_bytes"]) == (1, 3, uploaded_bytes)
        assert (stats["submits"], stats["submit_bytes"]) == (4, sum(len(body) for body in bodies))
        assert (stats["submits_with_data_uri"], stats["storage_fetches"]) == (1, 3)
        reset = client.post(f"{sim.base_url}/_stats/reset").json()
        assert [reset[name] for name in ("uploads", "upload_bytes", "submit_bytes", "submits_with_data_uri")] == [0] * 4
        assert reset["stored_files"] == 3, "a reset zeroes counters, not what is held"


def test_the_upload_fault_answers_503_then_stops_at_the_limit() -> None:
    with serve(faults=FaultRates(upload_5xx=1.0), fault_limit=2) as (sim, client):
        token = new_token(client, sim)  # the token endpoint is not faulted
        for _ in range(2):
            refused = upload(client, token)
            assert refused.status_code == 503 and "nginx" in refused.text
        response = upload(client, token)
        assert response.status_code == 200 and client.get(response.json()["access_url"]).content == PNG
        stats = sim.stats()
        assert (stats["faults"]["upload_5xx"], stats["uploads"], stats["upload_bytes"]) == (2, 1, len(PNG))
        wait_completed(client, submit(client, sim, ECHO, {}))  # the queue is not faulted either


def test_the_sim_command_has_a_flag_for_the_upload_fault() -> None:
    shown = CliRunner().invoke(main, ["sim", "--help"], terminal_width=200).output
    assert "--fault-upload-5xx" in shown and "upload to fal storage" in shown


def test_a_body_over_the_upload_cap_is_refused_with_413() -> None:
    with serve(upload_max_mb=1000 / 2**20) as (sim, client):
        token = new_token(client, sim)
        assert upload(client, token, b"\0" * 1000).status_code == 200
        response = upload(client, token, b"\0" * 1001)
        assert response.status_code == 413 and "at most 1000 bytes" in response.json()["detail"]
        assert sim.stats()["uploads"] == 1
