import base64
from collections.abc import Callable
from pathlib import Path

import pytest

from jobs.batch import Batch
from jobs.diagnostics import Diagnostic
from jobs.endpoints import WAN22_I2I, WAN25_I2I
from jobs.errors import LocalImageError
from jobs.images import ImageRefKind, encode_data_uri
from jobs.job import Job
from jobs.manifest import ImageSite, ManifestOptions, parse_manifest
from runner.fal.local_images import image_checker, inline_local_images

MakeImage = Callable[..., Path]
URL = "https://x.test/a.png"


def batch_of(tmp_path: Path, text: str, endpoint: str = WAN25_I2I):  # type: ignore[no-untyped-def]
    return parse_manifest(str(tmp_path / "m.csv"), text.encode(), ManifestOptions(default_endpoint=endpoint))


def checked_batch(tmp_path: Path, text: str, max_bytes: int, endpoint: str = WAN25_I2I) -> Batch:
    """The batch of the manifest `text` (in `tmp_path`) whose local images are checked."""
    options = ManifestOptions(default_endpoint=endpoint)
    return parse_manifest(str(tmp_path / "m.csv"), text.encode(), options, image_checker(tmp_path, max_bytes))


def image_problems(tmp_path: Path, text: str, max_bytes: int, endpoint: str = WAN25_I2I) -> list[Diagnostic]:
    return checked_batch(tmp_path, text, max_bytes, endpoint).errors


def test_local_images_that_exist_pass(tmp_path: Path, make_image: MakeImage) -> None:
    make_image("imgs/a.png")
    make_image("imgs/b.jpg", fmt="JPEG")
    assert image_problems(tmp_path, "prompt,image_urls\nx,imgs/a.png|imgs/b.jpg\n", max_bytes=10_000) == []


@pytest.mark.parametrize(
    ("setup", "ref", "fragment"),
    [
        (None, "missing.png", "no such file: "),
        ("text", "notes.png", "not a readable image: "),
        ("dir", "folder", "not a file: "),
        ("big", "big.png", "more than the cap of 500"),
    ],
)
def test_bad_local_images_are_located(
    tmp_path: Path, make_image: MakeImage, setup: str | None, ref: str, fragment: str
) -> None:
    if setup == "text":
        (tmp_path / ref).write_text("not an image")
    elif setup == "dir":
        (tmp_path / ref).mkdir()
    elif setup == "big":
        make_image(ref, size=(200, 200), fmt="BMP")
    text = f"prompt,image_url\nfirst,https://x.test/a.png\nsecond,{ref}\n"
    batch = checked_batch(tmp_path, text, max_bytes=500, endpoint=WAN22_I2I)
    assert [job.line for job in batch.jobs] == [2], "the row with a bad image is no job"
    problems = batch.errors
    assert len(problems) == 1
    assert problems[0].line == 3
    assert problems[0].field == "image_url"
    assert fragment in problems[0].message


def test_the_index_of_a_bad_image_in_a_list_is_named(tmp_path: Path, make_image: MakeImage) -> None:
    make_image("ok.png")
    problems = image_problems(tmp_path, "prompt,image_urls\nx,ok.png|gone.png\n", 10_000)
    assert [(p.field, p.line) for p in problems] == [("image_urls[1]", 2)]


def test_data_uris_over_the_cap_are_refused(tmp_path: Path) -> None:
    uri = encode_data_uri(b"\x89PNG" + b"0" * 2000, "image/png")
    problems = image_problems(tmp_path, f'prompt,image_urls\nx,"{uri}"\n', 1000)
    assert len(problems) == 1
    assert "data URI holds 2,004 bytes, more than the cap of 1,000" in problems[0].message


def test_inlining_turns_local_paths_into_data_uris(tmp_path: Path, make_image: MakeImage) -> None:
    path = make_image("a.png")
    batch = batch_of(tmp_path, "prompt,image_urls\nx,a.png|https://x.test/b.png\n")
    body = inline_local_images(batch.jobs[0], tmp_path, max_bytes=10_000)
    prefix = "data:image/png;base64,"
    assert body["image_urls"][0].startswith(prefix)
    assert base64.b64decode(body["image_urls"][0][len(prefix) :]) == path.read_bytes()
    assert body["image_urls"][1] == "https://x.test/b.png"
    assert batch.jobs[0].input["image_urls"][0] == "a.png", "the job itself is unchanged"


def test_inlining_a_file_that_vanished_names_the_job(tmp_path: Path, make_image: MakeImage) -> None:
    path = make_image("a.png")
    batch = batch_of(tmp_path, "id,prompt,image_url\nj1,x,a.png\n", WAN22_I2I)
    path.unlink()
    with pytest.raises(LocalImageError, match="j1: image_url: no such file"):
        inline_local_images(batch.jobs[0], tmp_path, max_bytes=10_000)


@pytest.mark.parametrize("ref", ["a\x00b.png", "a\ud800.png"])
def test_a_name_no_file_system_holds_is_a_problem_not_a_crash(tmp_path: Path, ref: str) -> None:
    """`stat` raised ValueError (embedded null byte) or UnicodeEncodeError; validation now refuses such
    references earlier, but the probe stands on its own."""
    problem = image_checker(tmp_path, 10_000)(ImageSite(2, "image_url", ref, ImageRefKind.LOCAL_PATH))
    assert problem is not None and "not a possible file name" in problem


def test_a_nul_in_a_local_path_is_a_located_error_of_the_manifest(tmp_path: Path) -> None:
    problems = image_problems(tmp_path, "prompt,image_url\nx,a\x00b.png\n", 10_000, WAN22_I2I)
    assert [str(d) for d in problems] == [
        f"{tmp_path / 'm.csv'}:2: image_url: image reference holds a control character '\\x00' at position 2"
    ]


def test_inlining_a_reference_recorded_before_it_was_refused_fails_the_job(tmp_path: Path) -> None:
    job = Job(id="j1", endpoint=WAN22_I2I, input={"prompt": "x", "image_url": "a\x00b.png"}, fingerprint="f",
              file="m.csv", line=2, row=1)  # fmt: skip
    with pytest.raises(LocalImageError, match="j1: image_url: image reference holds a control character"):
        inline_local_images(job, tmp_path, max_bytes=10_000)
