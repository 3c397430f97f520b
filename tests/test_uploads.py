"""Uploads of local images: where they go, how long they are sent, and what a file that fails does to its rows."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from PIL import Image

from jobs.endpoints import WAN25_I2I
from jobs.errors import ManifestError, UploadExpiredError
from jobs.manifest import ManifestOptions, parse_manifest
from runner.batches.uploads import read_images, refuse_or_skip
from runner.cli import main
from runner.fal.local_images import uploaded_local_images
from runner.fal.providers import Provider
from runner.fal.storage import FAL_STORAGE_URL, storage_url_for
from runner.ledger.keys import Keys
from runner.ledger.uploads import BatchImages, LocalImage, Upload, Uploads

URL = "https://x.test/a.png"


def batch_of(tmp_path: Path, rows: list[str]):  # type: ignore[no-untyped-def]
    text = "id,prompt,image_urls\n" + "".join(f"{row}\n" for row in rows)
    return parse_manifest(str(tmp_path / "m.csv"), text.encode(), ManifestOptions(default_endpoint=WAN25_I2I))


def test_a_file_that_could_not_be_uploaded_is_an_error_of_each_row_that_names_it(tmp_path: Path) -> None:
    batch = batch_of(tmp_path, ["a,x,in/bad.png", f"b,y,{URL}", "c,z,in/ok.png|in/bad.png"])
    problems = {"in/bad.png": "upload to fal storage failed: upload: HTTP 503"}
    with pytest.raises(ManifestError) as refused:
        refuse_or_skip(batch, problems, skip_invalid=False)
    assert [str(d) for d in refused.value.diagnostics] == [
        f"{tmp_path / 'm.csv'}:2: image_urls[0]: in/bad.png: upload to fal storage failed: upload: HTTP 503",
        f"{tmp_path / 'm.csv'}:4: image_urls[1]: in/bad.png: upload to fal storage failed: upload: HTTP 503",
    ]
    skipped = refuse_or_skip(batch, problems, skip_invalid=True)
    assert [job.id for job in skipped.jobs] == ["b"] and [d.line for d in skipped.errors] == [2, 4]
    with pytest.raises(ManifestError):  # nothing would be left to run
        refuse_or_skip(batch_of(tmp_path, ["a,x,in/bad.png"]), problems, skip_invalid=True)
    assert refuse_or_skip(batch, {}, skip_invalid=False) is batch


def test_reading_a_batchs_images_gives_content_and_pixel_size_once_per_path(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    Image.new("RGB", (30, 20), (1, 2, 3)).save(tmp_path / "in" / "ok.png")
    (tmp_path / "in" / "text.png").write_text("not an image")
    batch = batch_of(tmp_path, ["a,x,in/ok.png", "b,y,in/ok.png|in/text.png", "c,z,in/gone.png"])
    images, problems = read_images(batch.jobs, tmp_path)
    assert list(images) == ["in/ok.png"] and (images["in/ok.png"].width, images["in/ok.png"].height) == (30, 20)
    assert images["in/ok.png"].mime == "image/png" and len(images["in/ok.png"].sha256) == 64
    assert problems == {"in/text.png": f"not a readable image: {tmp_path / 'in' / 'text.png'} (UnidentifiedImageError)",
                        "in/gone.png": f"cannot read {tmp_path / 'in' / 'gone.png'}: No such file or directory"}  # fmt: skip


def test_a_job_is_sent_the_live_upload_of_each_path_and_never_an_expired_one(redis_client: redis.Redis) -> None:
    keys, now = Keys(), time.time()
    image = LocalImage(sha256="ab" * 32, bytes=10, width=1, height=1, mime="image/png")
    BatchImages(redis_client, keys).save("b", {"in/a.png": image, "in/b.png": image.model_copy(update={"sha256": "cd" * 32})})
    here, there = Uploads(redis_client, keys, "http://storage-1"), Uploads(redis_client, keys, "http://storage-2")
    here.remember("ab" * 32, Upload(url="http://storage-1/a", expires_at=now + 60), now)
    there.remember("cd" * 32, Upload(url="http://storage-2/b", expires_at=now + 60), now)
    urls = BatchImages(redis_client, keys).urls("b", ["in/a.png", "in/b.png", "in/c.png"], here, now)
    assert urls == {"in/a.png": "http://storage-1/a", "in/b.png": None, "in/c.png": None}, "each storage its own"
    assert BatchImages(redis_client, keys).urls("b", ["in/a.png"], here, now + 61) == {"in/a.png": None}, "gone by then"
    assert 0 < redis_client.ttl(keys.upload("http://storage-1", "ab" * 32)) <= 60, "gone from Redis when it lapses"
    here.remember("ee" * 32, Upload(url="http://storage-1/e", expires_at=now - 1), now)
    assert not redis_client.exists(keys.upload("http://storage-1", "ee" * 32)), "a lapsed upload is not kept"


def test_a_path_without_a_live_upload_fails_its_job_as_upload_expired(tmp_path: Path) -> None:
    job = batch_of(tmp_path, [f"j1,x,in/a.png|{URL}"]).jobs[0]
    body = uploaded_local_images(job, {"in/a.png": "https://v3.fal.media/files/a.png"})
    assert body["image_urls"] == ["https://v3.fal.media/files/a.png", URL] and job.input["image_urls"][0] == "in/a.png"
    with pytest.raises(UploadExpiredError, match=r"j1: image_urls: the upload of in/a.png to fal storage has expired;"
                                                 r" run the batch again where its images are"):  # fmt: skip
        uploaded_local_images(job, {"in/a.png": None})


@pytest.mark.parametrize(("given", "base_url", "expected"), [
    (None, "https://queue.fal.run", FAL_STORAGE_URL),
    (None, "http://127.0.0.1:8123/some/path", "http://127.0.0.1:8123"),
    ("http://storage.test/", "https://queue.fal.run", "http://storage.test"),
])  # fmt: skip
def test_where_images_are_uploaded(given: str | None, base_url: str, expected: str) -> None:
    assert storage_url_for(given, Provider.fal("k", base_url)) == expected


@pytest.mark.parametrize(("ttl", "fragment"), [
    ("10min", "give at least 1h"),
    ("soon", "'soon' is not a duration"),
])  # fmt: skip
def test_an_upload_lifetime_shorter_than_an_hour_is_refused(tmp_path: Path, ttl: str, fragment: str) -> None:
    result = CliRunner().invoke(main, ["run", str(Path(__file__).parent.parent / "examples" / "wan22.csv"), "--sim",
                                       "--out", str(tmp_path / "out"), "--upload-ttl", ttl])  # fmt: skip
    assert result.exit_code == 2 and fragment in result.stderr
    assert not (tmp_path / "out").exists()
