"""`report.html` in a real browser (Debian's headless chromium, driven by Selenium): what a user sees."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from jobs.report import summarize
from runner.steps.gallery import gallery_html
from tests.test_gallery import EVIL, records
from tests.test_run_e2e import ROOT, run_cli


def image_widths(browser: Any) -> list[int]:
    """Each image's natural width once it has loaded: thumbnails are lazy, so each is scrolled into view and waited for."""
    script = "return Array.from(document.images).map(i => (i.scrollIntoView(), i.complete ? i.naturalWidth : -1))"
    WebDriverWait(browser, 30).until(lambda driver: all(width >= 0 for width in driver.execute_script(script)))
    widths = list(browser.execute_script(script))
    browser.execute_script("window.scrollTo(0, 0)")
    return widths


def visible_jobs(browser: Any) -> list[str]:
    return [card.find_element(By.CSS_SELECTOR, "b").text for card in browser.find_elements(By.CSS_SELECTOR, ".job")
            if card.is_displayed()]  # fmt: skip


def test_a_batch_report_opens_from_disk_with_its_thumbnails_filters_and_text_as_text(
    tmp_path: Path, browser: Any
) -> None:
    folder = tmp_path / "out" / "batch"
    made = records(folder)
    page = gallery_html(made, summarize(made, 2.0), {"batch_id": "batch"}, folder, {"in.png": tmp_path / "out" / "in.png"})
    (folder / "report.html").write_text(page)
    browser.get((folder / "report.html").as_uri())
    widths = image_widths(browser)
    assert widths and all(width > 0 for width in widths), widths
    assert visible_jobs(browser) == ["a@seed7", "b"]
    Select(browser.find_element(By.ID, "status")).select_by_visible_text("failed")
    assert visible_jobs(browser) == ["b"] and browser.find_element(By.ID, "shown").text == "1 of 2 jobs shown"
    Select(browser.find_element(By.ID, "status")).select_by_visible_text("all")
    Select(browser.find_element(By.ID, "error")).select_by_visible_text("validation")
    assert visible_jobs(browser) == ["b"]
    Select(browser.find_element(By.ID, "error")).select_by_visible_text("all")
    assert visible_jobs(browser) == ["a@seed7", "b"]
    Select(browser.find_element(By.ID, "sort")).select_by_visible_text("status")
    assert visible_jobs(browser) == ["b", "a@seed7"], "failed first"
    prompts = [element.text for element in browser.find_elements(By.CSS_SELECTOR, ".prompt")]
    assert EVIL in prompts, "the prompt is shown as text, its <script> never run"
    assert browser.execute_script("return document.scripts.length") == 1
    browser.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 0


def test_the_report_of_a_real_run_shows_every_image(tmp_path: Path, browser: Any) -> None:
    done = run_cli(["run", str(ROOT / "examples" / "wan25-matrix.yaml"), "--sim", "--out", str(tmp_path / "out"),
                    "--quiet"], tmp_path, FAL_KEY="")  # fmt: skip
    assert done.returncode == 0, done.stderr
    copied = shutil.copytree(tmp_path / "out" / "wan25-matrix", tmp_path / "elsewhere")  # a copy still works
    browser.get((Path(copied) / "report.html").as_uri())
    widths = image_widths(browser)
    assert len(widths) == 11 and all(width > 0 for width in widths), widths  # 6 inputs, 5 outputs
    assert visible_jobs(browser) == ["storm@seed7", "storm@seed42", "storm-wide@seed7", "storm-wide@seed42", "fused"]
    browser.save_screenshot(str(tmp_path / "run-report.png"))
