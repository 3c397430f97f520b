"""`report.html`, the batch's contact sheet: escaped, self-contained, with thumbnails (issue 14, item 1)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

from jobs.job import Job
from jobs.record import JobRecord, OutputFile
from jobs.report import summarize
from jobs.status import JobStatus
from runner.steps.gallery import THUMB_PX, gallery_html

EVIL = '<script>alert("x")</script> & "quotes"'


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        self.links += [value or "" for name, value in attrs if name in ("src", "href")]


def records(folder: Path) -> list[JobRecord]:
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (800, 600), (10, 200, 10)).save(folder / "images" / "a@seed7_0.png")
    Image.new("RGB", (64, 48), (200, 10, 10)).save(folder.parent / "in.png")
    done = Job("a-1", "fal-ai/wan-25-preview/image-to-image", {"prompt": EVIL, "image_urls": ["in.png", "https://x.test/b.png"]},
               "f1", "m.yaml", 3, 1, matrix={"seed": 7}, name="a@seed7")  # fmt: skip
    failed = Job("b", "fal-ai/wan/v2.2-a14b/image-to-image", {"prompt": "p", "image_url": "in.png"}, "f2", "m.yaml", 4, 2)
    output = OutputFile(0, "images/a@seed7_0.png", "http://x/0", "image/png", 800, 600, 10, 7)
    return [JobRecord(done, JobStatus.SUCCEEDED, attempts=1, outputs=(output,), submitted_at=0.0, finished_at=2.0),
            JobRecord(failed, JobStatus.FAILED, attempts=3, error_type="validation", error_message=EVIL)]  # fmt: skip


def test_the_page_escapes_what_came_from_a_manifest_or_fal_and_links_only_inside_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "batch"
    made = records(folder)
    page = gallery_html(made, summarize(made, 2.0), {"batch_id": "batch"}, folder, {"in.png": tmp_path / "out" / "in.png"})
    assert EVIL not in page and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#34;quotes&#34;" in page
    parsed = _Links()
    parsed.feed(page)
    assert parsed.scripts == 1, "only the page's own script"
    assert all(not link.startswith(("/", "http", "file:")) for link in parsed.links), parsed.links
    assert "images/a@seed7_0.png" in parsed.links and "https://x.test/b.png" in page, "a URL input is text, never fetched"
    thumbs = sorted(p.name for p in (folder / "thumbs").iterdir())
    assert len(thumbs) == 2 and all(f"thumbs/{name}" in parsed.links for name in thumbs)
    with Image.open(folder / "thumbs" / "out-a@seed7_0.jpg") as thumb:
        assert max(thumb.size) == THUMB_PX
    before = (folder / "thumbs" / "out-a@seed7_0.jpg").stat().st_mtime_ns
    gallery_html(made, summarize(made, 2.0), {"batch_id": "batch"}, folder, {})
    assert (folder / "thumbs" / "out-a@seed7_0.jpg").stat().st_mtime_ns == before, "a thumbnail is made once"
