"""The dashboard for real: `wan-batch run --serve` and `wan-batch serve` in subprocesses, pages in headless chromium."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from jobs.endpoints import WAN25_I2I
from runner.embedded.server import EmbeddedRedis
from tests.test_run_e2e import WAN_BATCH, cli_env, run_cli

EVIL = '<img src=x onerror="window.__xss = 1">storm'


def manifest(folder: Path, jobs: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (30, 120, 200)).save(folder / "a.png")
    rows = [{"endpoint": WAN25_I2I, "id": f"j{n}", "prompt": EVIL if n == 0 else f"prompt {n}", "image_urls": ["a.png"]}
            for n in range(jobs)]  # fmt: skip
    path = folder / "batch.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:  # stopped as a user would, so what it started stops with it; killed if it hangs
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start(args: list[str], cwd: Path, processes: list[subprocess.Popen[str]]) -> tuple[subprocess.Popen[str], str]:
    """Start a command that serves the app; its URL, once it printed it."""
    log = cwd / f"{args[0]}-{len(processes)}.err"
    with log.open("w") as stderr:
        process = subprocess.Popen([WAN_BATCH, *args], cwd=cwd, env=cli_env(), stdout=subprocess.DEVNULL,
                                   stderr=stderr, text=True)  # fmt: skip
    processes.append(process)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"(http://127\.0\.0\.1:\d+)/", log.read_text())
        if found:
            return process, found.group(1)
        assert process.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(f"no URL printed: {log.read_text()}")


def text_of(browser: Any, css: str) -> str:
    """The text of the element `css` finds now (the page re-renders rows: a found element may be gone)."""
    return str(browser.execute_script("const e = document.querySelector(arguments[0]); return e ? e.textContent : ''",
                                      css))  # fmt: skip


def counts(browser: Any) -> dict[str, int]:
    spans = browser.find_elements(By.CSS_SELECTOR, "#counts [data-status]")
    return {span.get_attribute("data-status"): int(span.find_element(By.TAG_NAME, "b").text) for span in spans}


def test_the_dashboard_of_a_running_batch_updates_without_reload(
    tmp_path: Path, browser: Any, started: list[subprocess.Popen[str]]
) -> None:
    path = manifest(tmp_path / "in", jobs=6)
    run, url = start(["run", str(path), "--sim", "--out", str(tmp_path / "out"), "--serve", "0", "--quiet",
                      "--sim-run-time", "uniform:2,3", "--sim-concurrency", "2", "--max-in-flight", "2"],
                     tmp_path, started)  # fmt: skip
    with httpx.Client(base_url=url, timeout=30) as http:  # the app serves from the start; the batch is recorded next
        deadline = time.monotonic() + 60
        while http.get("/api/batches/batch").status_code == 404:
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.05)
    browser.get(f"{url}/batches/batch")
    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "jobs").text == "6")
    first = counts(browser)
    assert first["succeeded"] < 6, "the page opened before the batch ended"
    browser.execute_script("window.__same_page = 42")  # a reload would lose it
    WebDriverWait(browser, 60).until(lambda b: counts(b)["succeeded"] > first["succeeded"])
    WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "ended").text == "6")
    assert browser.execute_script("return window.__same_page") == 42, "updated in place, never reloaded"
    assert counts(browser)["succeeded"] == 6 and browser.find_element(By.ID, "state").text == "done"
    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "cost").text == "$0.30")  # 6 images at $0.05, shown
    assert len(browser.find_elements(By.CSS_SELECTOR, "#gallery figure")) == 6
    prompts = [element.text for element in browser.find_elements(By.CSS_SELECTOR, "#gallery .prompt")]
    assert EVIL in prompts and browser.execute_script("return window.__xss") is None, "a prompt is text, never HTML"
    browser.save_screenshot(str(tmp_path / "dashboard-batch.png"))
    assert run.wait(timeout=60) == 0


def test_serve_shows_an_output_folder_and_outlives_the_runs_into_it(
    tmp_path: Path, browser: Any, started: list[subprocess.Popen[str]]
) -> None:
    path = manifest(tmp_path / "in", jobs=2)
    out = tmp_path / "out"
    assert run_cli(["run", str(path), "--sim", "--out", str(out), "--quiet", "--batch-id", "first"], tmp_path,
                   FAL_KEY="").returncode == 0  # fmt: skip
    serve, url = start(["serve", "--out", str(out), "--port", "0"], tmp_path, started)
    with httpx.Client(base_url=url, timeout=30) as http:
        assert [b["batch_id"] for b in http.get("/api/batches").json()] == ["first"]
        # A run into the folder adopts the Redis the app started, and stops it when it ends: the app starts it again.
        assert run_cli(["run", str(path), "--sim", "--out", str(out), "--quiet", "--batch-id", "second"], tmp_path,
                       FAL_KEY="").returncode == 0  # fmt: skip
        assert [b["batch_id"] for b in http.get("/api/batches").json()] == ["second", "first"]
        assert 'wan_batch_jobs{batch="second",status="succeeded"} 2.0' in http.get("/metrics").text
    browser.get(url)
    WebDriverWait(browser, 30).until(lambda b: "2/2" in text_of(b, '#batches tr[data-batch="second"]'))
    assert "2/2" in text_of(browser, '#batches tr[data-batch="first"]')
    browser.save_screenshot(str(tmp_path / "dashboard-batches.png"))
    browser.get(f"{url}/batches/second")
    loaded = "return Array.from(document.querySelectorAll('#gallery img')).map(i => i.complete && i.naturalWidth > 0)"
    WebDriverWait(browser, 30).until(lambda b: b.execute_script(loaded) == [True, True])  # thumbnails made on demand
    browser.save_screenshot(str(tmp_path / "dashboard-folder.png"))
    serve.send_signal(signal.SIGINT)
    assert serve.wait(timeout=30) == 130, "stopped as every command is by Ctrl-C"
    assert not EmbeddedRedis(out / ".wan-batch" / "redis").answers(), "the app stopped the Redis it started"


def test_serve_refuses_what_would_open_too_much_before_it_listens(tmp_path: Path) -> None:
    (tmp_path / "out" / ".wan-batch" / "redis").mkdir(parents=True)
    beyond = run_cli(["serve", "--out", str(tmp_path / "out"), "--host", "0.0.0.0", "--port", "0"], tmp_path)
    assert beyond.returncode == 2 and "WAN_BATCH_SERVE_TOKEN" in beyond.stderr
    actions = run_cli(["serve", "--out", str(tmp_path / "out"), "--port", "0", "--allow-actions"], tmp_path)
    assert actions.returncode == 2 and "WAN_BATCH_SERVE_TOKEN" in actions.stderr
    path = manifest(tmp_path / "in", jobs=1)
    bad = run_cli(["run", str(path), "--sim", "--out", str(tmp_path / "o1"), "--serve", "host:port"], tmp_path)
    assert bad.returncode == 2 and "not [HOST:]PORT" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_cli(["run", str(path), "--sim", "--out", str(tmp_path / "o2"), "--serve", str(port)], tmp_path)
    assert busy.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in busy.stderr
    assert not (tmp_path / "o2" / "batch").exists(), "nothing ran"
    nowhere = run_cli(["serve", "--out", str(tmp_path / "nothing"), "--port", "0"], tmp_path)
    assert nowhere.returncode == 2 and "holds no batches" in nowhere.stderr
