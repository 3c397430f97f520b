"""fal's request history (Platform API) in the simulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from jobs.endpoints import WAN22_I2I
from runner.cli import main
from runner.simulator import FaultRates, ManualClock, RunningSimulator, SimConfig, run_simulator
from tests.test_sim_cli import sim_process
from tests.test_simulator import ECHO, serve, submit, wan22_body

HISTORY = "/v1/models/requests/by-endpoint"
ITEM_KEYS = {"request_id", "endpoint_id", "started_at", "sent_at", "ended_at", "status_code", "duration"}
#: Past the default history lag (1 s), away from its boundary.
PAST_LAG_S = 1.5


def history(client: httpx.Client, sim: RunningSimulator, **params: Any) -> httpx.Response:
    """A history call; `endpoint_id` defaults to the echo endpoint (None leaves it out)."""
    params = {"endpoint_id": ECHO, **params}
    return client.get(f"{sim.base_url}{HISTORY}", params={k: v for k, v in params.items() if v is not None})


def listed(client: httpx.Client, sim: RunningSimulator, **params: Any) -> list[dict[str, Any]]:
    response = history(client, sim, **params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["request_id"] for item in items]


def instant(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() == timedelta(0), text
    return moment


def all_pages(client: httpx.Client, sim: RunningSimulator, between: Callable[[], None] = lambda: None,
              **params: Any) -> list[dict[str, Any]]:  # fmt: skip
    """Every page, following next_cursor; `between` runs after each page but the last."""
    pages = []
    cursor = None
    while True:
        page = history(client, sim, cursor=cursor, **params).json()
        pages.append(page)
        assert page["has_more"] == (page["next_cursor"] is not None)
        if not page["has_more"]:
            return pages
        cursor = page["next_cursor"]
        between()


def one_of_each_outcome(client: httpx.Client, sim: RunningSimulator, clock: ManualClock) -> dict[str, str]:
    """Every outcome, all past the lag, on a simulator of concurrency 1, run time 1 s and one model_error fault."""
    started = {
        "model_error": submit(client, sim, ECHO, {"n": "model_error"}),  # runs 0..1, the fault strikes
        "ok": submit(client, sim, ECHO, {"n": "ok"}),  # 1..2
        "invalid_input": submit(client, sim, WAN22_I2I, {"image_url": "https://example.com/a.png"}),  # at 2, no run
        "cancelled_running": submit(client, sim, ECHO, {"n": "cancelled running"}),  # 2..2.25
        "timed_out": submit(client, sim, ECHO, {"n": "late"}, {"X-Fal-Request-Timeout": "0.5"}),  # ends at 0.5
        "cancelled_queued": submit(client, sim, ECHO, {"n": "cancelled queued"}),  # ends at 0
    }
    assert client.put(started["cancelled_queued"]["cancel_url"]).status_code == 202
    clock.advance(2.25)
    assert client.put(started["cancelled_running"]["cancel_url"]).status_code == 202
    clock.advance(PAST_LAG_S)
    return {name: submitted["request_id"] for name, submitted in started.items()}


BOTH_ENDPOINTS = f"{ECHO},{WAN22_I2I}"
EACH_OUTCOME = {"concurrency": 1, "run_time": "fixed:1", "faults": FaultRates(model_error=1.0), "fault_limit": 1}


# --- what is listed, and when ---------------------------------------------------


@pytest.mark.parametrize("lag_s", [0.0, 1.0, 3.0])
def test_only_finished_requests_are_listed_and_only_after_the_lag(lag_s: float) -> None:
    clock = ManualClock()
    with serve(clock, concurrency=1, run_time="fixed:1", history_lag_s=lag_s) as (sim, client):
        submitted = [submit(client, sim, ECHO, {"n": n}) for n in range(3)]  # they end at 1, 2 and 3
        for now in (0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5):
            clock.advance(now - clock())
            finished = [s for n, s in enumerate(submitted) if n + 1 <= now]
            statuses = [client.get(s["status_url"]).json()["status"] for s in submitted]
            assert statuses.count("COMPLETED") == len(finished)
            shown = [s["request_id"] for n, s in enumerate(submitted) if n + 1 + lag_s <= now]
            assert ids(listed(client, sim)) == shown[::-1]  # newest first


def test_items_carry_the_timings_and_payloads_only_when_asked() -> None:
    clock = ManualClock()
    with serve(clock, run_time="fixed:1") as (sim, client):
        body = wan22_body(num_inference_steps=30)
        submitted = submit(client, sim, WAN22_I2I, body)
        clock.advance(1 + PAST_LAG_S)

        [item] = listed(client, sim, endpoint_id=WAN22_I2I)
        assert set(item) == ITEM_KEYS
        assert (item["request_id"], item["endpoint_id"], item["status_code"]) == (
            submitted["request_id"], WAN22_I2I, 200)  # fmt: skip
        sent, started, ended = (instant(item[name]) for name in ("sent_at", "started_at", "ended_at"))
        assert sent == started  # a free slot: it started at once
        assert (ended - started).total_seconds() == pytest.approx(item["duration"], abs=1e-5)
        assert item["duration"] == pytest.approx(1.0)
        assert abs(datetime.now(UTC) - sent) < timedelta(minutes=5)  # wall time, not the test's clock

        for expand in ("payloads", "logs,payloads", "metrics, payloads"):  # unknown words are ignored
            [with_payloads] = listed(client, sim, endpoint_id=WAN22_I2I, expand=expand)
            assert set(with_payloads) == ITEM_KEYS | {"json_input", "json_output"}
            assert with_payloads["json_input"] == body
            assert with_payloads["json_output"] is None  # no result was fetched: none is held
        assert set(listed(client, sim, endpoint_id=WAN22_I2I, expand="logs")[0]) == ITEM_KEYS


def test_status_code_of_each_outcome_is_what_its_result_answers() -> None:
    clock = ManualClock()
    with serve(clock, **EACH_OUTCOME) as (sim, client):
        outcomes = one_of_each_outcome(client, sim, clock)
        items = {item["request_id"]: item for item in listed(client, sim, endpoint_id=BOTH_ENDPOINTS)}
        assert set(items) == set(outcomes.values())
        expected = {
            "model_error": (500, 1.0),
            "ok": (200, 1.0),
            "invalid_input": (422, 0.0),
            "cancelled_running": (499, 0.25),
            "timed_out": (504, None),
            "cancelled_queued": (499, None),
        }
        for name, (status_code, duration) in expected.items():
            item = items[outcomes[name]]
            assert (item["status_code"], item["duration"]) == (status_code, pytest.approx(duration)), name
            assert (item["started_at"] is None) == (duration is None), name
            app = "fal-ai/wan" if name == "invalid_input" else "wan-batch-sim/echo"
            result = client.get(f"{sim.base_url}/{app}/requests/{outcomes[name]}")
            assert result.status_code == status_code, name
        assert sim.stats()["requests"][outcomes["timed_out"]]["outcome"] == "timed_out"


def test_json_output_while_held_and_json_input_past_the_purge() -> None:
    clock = ManualClock()
    with serve(clock, run_time="fixed:1", retention_s=60) as (sim, client):
        bodies = {"fetched": wan22_body(), "unfetched": wan22_body(prompt="never fetched"), "invalid": {"prompt": "p"}}
        started = {name: submit(client, sim, WAN22_I2I, body) for name, body in bodies.items()}
        clock.advance(1 + PAST_LAG_S)  # slots 2: the first two end at 1, the invalid one at once at 1
        result = client.get(started["fetched"]["response_url"]).json()

        by_name = {name: s["request_id"] for name, s in started.items()}
        items = {item["request_id"]: item for item in listed(client, sim, endpoint_id=WAN22_I2I, expand="payloads")}
        assert items[by_name["fetched"]]["json_output"] == result
        assert items[by_name["unfetched"]]["json_output"] is None
        assert items[by_name["invalid"]]["json_output"] is None

        clock.advance(60)  # past retention: the queue forgets them
        assert client.get(started["fetched"]["response_url"]).status_code == 404
        assert (sim.stats()["held_inputs"], sim.stats()["held_results"]) == (0, 0)
        items = {item["request_id"]: item for item in listed(client, sim, endpoint_id=WAN22_I2I, expand="payloads")}
        assert {name: items[request_id]["json_input"] for name, request_id in by_name.items()} == bodies
        assert all(item["json_output"] is None for item in items.values())
        assert items[by_name["fetched"]]["status_code"] == 200


def test_a_lost_submit_shows_with_its_input() -> None:
    clock = ManualClock()
    with serve(clock, faults=FaultRates(lost_submit_response=1.0), fault_limit=1) as (sim, client):
        body = {"job": "lost", "nested": {"seed": 3, "tags": ["a", "é"]}}
        with pytest.raises(httpx.TransportError):
            client.post(f"{sim.base_url}/{ECHO}", json=body)
        submit(client, sim, ECHO, {"job": "other"})
        assert listed(client, sim) == []  # still running
        clock.advance(0.1 + PAST_LAG_S)
        items = listed(client, sim, expand="payloads")
        matches = [item for item in items if item["json_input"] == body]
        assert len(items) == 2 and len(matches) == 1
        assert matches[0]["request_id"] in sim.stats()["requests"]


# --- filters ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint_id", "expected"),
    [
        (ECHO, {"echo"}),
        (f"{ECHO}/other", {"other"}),
        (f"{ECHO},{WAN22_I2I}", {"echo", "wan22"}),
        (f" {ECHO} , {ECHO}/other ,", {"echo", "other"}),
        ("wan-batch-sim/echo", set()),  # the app is not an endpoint
        ("fal-ai/flux/dev", set()),
    ],
)
def test_endpoint_filter(endpoint_id: str, expected: set[str]) -> None:
    clock = ManualClock()
    with serve(clock, concurrency=3) as (sim, client):
        started = {
            "echo": submit(client, sim, ECHO, {}),
            "other": submit(client, sim, f"{ECHO}/other", {}),
            "wan22": submit(client, sim, WAN22_I2I, {"prompt": "no image"}),
        }
        clock.advance(0.1 + PAST_LAG_S)
        items = listed(client, sim, endpoint_id=endpoint_id)
        assert set(ids(items)) == {started[name]["request_id"] for name in expected}
        endpoints = {"echo": ECHO, "other": f"{ECHO}/other", "wan22": WAN22_I2I}
        assert {item["endpoint_id"] for item in items} == {endpoints[name] for name in expected}


def test_repeated_endpoint_id_parameters_add_up() -> None:
    clock = ManualClock()
    with serve(clock) as (sim, client):
        submit(client, sim, ECHO, {})
        submit(client, sim, f"{ECHO}/other", {})
        clock.advance(0.1 + PAST_LAG_S)
        url = f"{sim.base_url}{HISTORY}?endpoint_id={ECHO}&endpoint_id={ECHO}/other"
        assert len(client.get(url).json()["items"]) == 2


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("success", {"ok"}),
        ("user_error", {"invalid_input", "cancelled_running", "cancelled_queued"}),
        ("error", {"model_error", "timed_out"}),
    ],
)
def test_status_filter(status: str, expected: set[str]) -> None:
    clock = ManualClock()
    with serve(clock, **EACH_OUTCOME) as (sim, client):
        outcomes = one_of_each_outcome(client, sim, clock)
        items = listed(client, sim, endpoint_id=BOTH_ENDPOINTS, status=status)
        assert set(ids(items)) == {outcomes[name] for name in expected}


def test_request_id_filter() -> None:
    clock = ManualClock()
    with serve(clock) as (sim, client):
        submitted = [submit(client, sim, ECHO, {"n": n}) for n in range(2)]
        clock.advance(0.1 + PAST_LAG_S)
        wanted = submitted[1]["request_id"]
        assert ids(listed(client, sim, request_id=wanted)) == [wanted]
        assert listed(client, sim, request_id="00000000-0000-4000-8000-000000000000") == []
        assert listed(client, sim, request_id=wanted, endpoint_id=WAN22_I2I) == []


def test_start_and_end_bound_ended_at() -> None:
    clock = ManualClock()
    with serve(clock, concurrency=1, run_time="fixed:1") as (sim, client):
        first, second, third = (submit(client, sim, ECHO, {"n": n})["request_id"] for n in range(3))
        clock.advance(3 + PAST_LAG_S)
        ended = {item["request_id"]: item["ended_at"] for item in listed(client, sim)}
        middle = instant(ended[second])
        cases: list[tuple[dict[str, str], list[str]]] = [
            ({"start": ended[second]}, [third, second]),  # start is inclusive
            ({"end": ended[second]}, [first]),  # end is exclusive
            ({"start": ended[first], "end": ended[third]}, [second, first]),
            ({"start": middle.replace(tzinfo=None).isoformat()}, [third, second]),  # naive is UTC
            ({"start": middle.astimezone(timezone(timedelta(hours=2))).isoformat()}, [third, second]),
            ({"start": middle.isoformat().replace("+00:00", "Z")}, [third, second]),
            ({"start": ended[third], "end": ended[first]}, []),
        ]
        for params, expected in cases:
            assert ids(listed(client, sim, **params)) == expected, params


def test_without_start_the_last_24_hours_are_listed() -> None:
    clock = ManualClock()
    with serve(clock, run_time="fixed:1") as (sim, client):
        old = submit(client, sim, ECHO, {"n": "old"})["request_id"]
        clock.advance(1 + PAST_LAG_S)
        [item] = listed(client, sim)
        clock.advance(24 * 3600 - PAST_LAG_S)  # `old` ended 24 h and a moment ago
        new = submit(client, sim, ECHO, {"n": "new"})["request_id"]
        clock.advance(1 + PAST_LAG_S)
        assert ids(listed(client, sim)) == [new]
        assert ids(listed(client, sim, start=item["ended_at"])) == [new, old]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("limit", "0"),
        ("limit", "101"),
        ("limit", "-5"),
        ("limit", "ten"),
        ("sort_by", "created_at"),
        ("status", "ok"),
        ("start", "yesterday"),
        ("end", "2024-13-45T00:00:00"),
    ],
)
def test_invalid_parameters_answer_422(name: str, value: str) -> None:
    with serve() as (sim, client):
        response = history(client, sim, **{name: value})
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == ["query", name] and error["msg"] and error["type"]
        assert sim.stats()["history_calls"] == 1


@pytest.mark.parametrize("endpoint_id", [None, "", " , "])
def test_endpoint_id_is_required(endpoint_id: str | None) -> None:
    with serve() as (sim, client):
        response = history(client, sim, endpoint_id=endpoint_id)
        assert response.status_code == 422
        assert [error["loc"] for error in response.json()["detail"]] == [["query", "endpoint_id"]]


@pytest.mark.parametrize(("limit", "shown"), [(None, 50), ("1", 1), ("100", 51)])
def test_limit(limit: str | None, shown: int) -> None:
    clock = ManualClock()
    with serve(clock, concurrency=51) as (sim, client):
        for n in range(51):
            submit(client, sim, ECHO, {"n": n})
        clock.advance(0.1 + PAST_LAG_S)
        page = history(client, sim, limit=limit).json()
        assert len(page["items"]) == shown
        assert page["has_more"] == (shown < 51)


# --- paging -------------------------------------------------------------------------


def _sort_value(item: dict[str, Any], sort_by: str) -> tuple[bool, float]:
    if sort_by == "ended_at":
        return True, instant(item["ended_at"]).timestamp()
    return item["duration"] is not None, item["duration"] or 0.0


def _finish_a_mix(client: httpx.Client, sim: RunningSimulator, clock: ManualClock, count: int) -> list[str]:
    """`count` finished requests of varied run times, the last two cancelled at once; returns their ids."""
    submitted = [submit(client, sim, ECHO, {"n": n}) for n in range(count)]
    for never_started in submitted[-2:]:
        assert client.put(never_started["cancel_url"]).status_code == 202
    clock.advance(3 + PAST_LAG_S)
    return [s["request_id"] for s in submitted]


@pytest.mark.parametrize("sort_by", ["ended_at", "duration"])
def test_paging_collects_every_item_exactly_once(sort_by: str) -> None:
    clock = ManualClock()
    with serve(clock, concurrency=3, run_time="uniform:0.2,0.9", seed=4) as (sim, client):
        finished = _finish_a_mix(client, sim, clock, 11)
        pages = all_pages(client, sim, limit=4, sort_by=sort_by)
        assert [len(page["items"]) for page in pages] == [4, 4, 3]
        paged = [item for page in pages for item in page["items"]]
        whole = listed(client, sim, limit=100, sort_by=sort_by)
        assert sorted(ids(paged)) == sorted(ids(whole)) == sorted(finished)
        assert paged == whole  # same items, same order: pages are slices of the whole
        values = [_sort_value(item, sort_by) for item in whole]
        assert values == sorted(values, reverse=True)
        if sort_by == "duration":
            assert [item["duration"] for item in whole[-2:]] == [None, None]  # never started: last


@pytest.mark.parametrize("sort_by", ["ended_at", "duration"])
def test_paging_skips_nothing_while_more_requests_finish(sort_by: str) -> None:
    clock = ManualClock()
    with serve(clock, concurrency=3, run_time="uniform:0.2,0.9", seed=6) as (sim, client):
        finished = _finish_a_mix(client, sim, clock, 10)
        added: list[str] = []

        def more_finish() -> None:
            added.extend(_finish_a_mix(client, sim, clock, 4))

        pages = all_pages(client, sim, more_finish, limit=3, sort_by=sort_by)
        paged = ids([item for page in pages for item in page["items"]])
        assert len(pages) >= 4 and len(added) == 4 * (len(pages) - 1)
        assert set(finished) <= set(paged)
        assert len(paged) == len(set(paged))  # and none twice
        assert set(paged) <= set(finished) | set(added)


@pytest.mark.parametrize(
    "cursor",
    [
        "%%%not-base64",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b"[1, 2, 3]").decode(),
        base64.urlsafe_b64encode(b'{"sort_by": "ended_at", "key": [1, "x", 3]}').decode(),
        base64.urlsafe_b64encode(b'{"sort_by": "ended_at", "key": [1, 2.5]}').decode(),
        "duration-cursor",  # a real cursor, of the other sort order
    ],
)
def test_a_malformed_cursor_answers_400(cursor: str) -> None:
    clock = ManualClock()
    with serve(clock) as (sim, client):
        for n in range(2):
            submit(client, sim, ECHO, {"n": n})
        clock.advance(0.1 + PAST_LAG_S)
        if cursor == "duration-cursor":
            cursor = history(client, sim, limit=1, sort_by="duration").json()["next_cursor"]
            assert history(client, sim, limit=1, sort_by="duration", cursor=cursor).status_code == 200
        response = history(client, sim, cursor=cursor)
        assert response.status_code == 400
        assert isinstance(response.json()["detail"], str)


# --- auth, routes, faults and stats ------------------------------------------------


@pytest.mark.parametrize(
    ("key", "token", "header", "status"),
    [
        (None, None, "Key anything", 200),
        (None, None, "Bearer anything", 401),
        (None, None, None, 401),
        ("sim-key", None, "Key sim-key", 200),
        ("sim-key", None, "Key wrong-key", 401),
        ("sim-key", None, "Bearer sim-key", 401),
        (None, "sim-token", "Bearer sim-token", 401),
        (None, "sim-token", "Key sim-token", 401),
        ("sim-key", "sim-token", "Bearer sim-token", 401),
        ("sim-key", "sim-token", "Key sim-key", 200),
    ],
)
def test_the_platform_api_takes_only_a_fal_key(key: str | None, token: str | None, header: str | None,
                                               status: int) -> None:  # fmt: skip
    with run_simulator(SimConfig(key=key, token=token)) as sim, httpx.Client(timeout=10) as client:
        headers = {"Authorization": header} if header is not None else {}
        response = client.get(f"{sim.base_url}{HISTORY}", params={"endpoint_id": ECHO}, headers=headers)
        assert response.status_code == status
        if status == 401:
            detail = response.json()["detail"]
            sent = (header or "").partition(" ")[2]
            assert not sent or sent not in response.text
            if header is not None and header.startswith("Bearer"):
                assert "fal key" in detail
        else:
            assert response.json() == {"items": [], "next_cursor": None, "has_more": False}
        assert sim.stats()["history_calls"] == (1 if status == 200 else 0)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/models/billing-events", 404),
        ("GET", "/v1/models/requests/{known}/status", 404),
        ("GET", "/v1/models/requests/{known}", 404),
        ("GET", "/v1", 404),
        ("POST", "/v1/models/requests/by-endpoint", 405),
        ("POST", "/v1/models", 404),
    ],
)
def test_other_platform_paths_answer_json_errors(method: str, path: str, status: int) -> None:
    with serve() as (sim, client):
        known = submit(client, sim, ECHO, {})["request_id"]
        url = sim.base_url + path.format(known=known)
        response = client.request(method, url, json={} if method == "POST" else None)
        assert response.status_code == status
        assert response.json()["detail"]
        assert (sim.stats()["submits"], sim.stats()["history_calls"]) == (1, 0)


@pytest.mark.parametrize("kind", ["proxy_5xx", "rate_limit_429", "drop_connection"])
def test_queue_faults_strike_history_calls_too(kind: str) -> None:
    with serve(faults=FaultRates(**{kind: 1.0}), fault_limit=1) as (sim, client):
        if kind == "drop_connection":
            with pytest.raises(httpx.TransportError):
                history(client, sim)
        else:
            response = history(client, sim)
            assert response.status_code in (429, 502, 503, 504) and "x-fal-request-id" not in response.headers
        assert history(client, sim).status_code == 200
        stats = sim.stats()
        assert (stats["faults"][kind], stats["history_calls"]) == (1, 1)


def test_history_calls_are_counted_and_reset() -> None:
    with serve() as (sim, client):
        history(client, sim)
        history(client, sim, limit="0")  # refused, yet answered
        history(client, sim, endpoint_id=None)
        assert sim.stats()["history_calls"] == 3
        reset = client.post(f"{sim.base_url}/_stats/reset").json()
        assert reset["history_calls"] == 0
        history(client, sim)
        assert client.get(f"{sim.base_url}/_stats").json()["history_calls"] == 1


# --- the setting -----------------------------------------------------------------------


def test_history_lag_is_a_setting_and_a_cli_option() -> None:
    assert SimConfig().history_lag_s == 1.0
    with pytest.raises(ValidationError, match="history_lag_s"):
        SimConfig(history_lag_s=-1)
    refused = CliRunner().invoke(main, ["sim", "--history-lag-s", "-1"])
    assert refused.exit_code == 2 and "--history-lag-s" in refused.output


def test_cli_history_lag_reaches_the_simulator() -> None:
    args = ["--history-lag-s", "0", "--run-time", "fixed:0.05"]
    with sim_process(args) as served, httpx.Client(timeout=10, headers={"Authorization": "Key k"}) as client:
        submitted = client.post(f"{served.base_url}/{ECHO}", json={"n": 1}).json()
        deadline = time.monotonic() + 10
        while client.get(submitted["status_url"]).status_code != 200:
            assert time.monotonic() < deadline, "the request did not complete"
            time.sleep(0.02)
        # With no lag it is listed as soon as it completed (the default lag would hide it for a second).
        page = client.get(f"{served.base_url}{HISTORY}", params={"endpoint_id": ECHO}).json()
        assert [item["request_id"] for item in page["items"]] == [submitted["request_id"]]
