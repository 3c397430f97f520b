import base64

import pytest

from jobs.images import (
    ImageRefKind,
    classify_image_ref,
    data_uri_size_bytes,
    encode_data_uri,
    image_ref_values,
)

PNG_URI = encode_data_uri(b"\x89PNG\r\n\x1a\n0000", "image/png")


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("https://v3.fal.media/files/a.png", ImageRefKind.URL),
        ("HTTP://example.com/a.png", ImageRefKind.URL),
        (PNG_URI, ImageRefKind.DATA_URI),
        ("images/cat.png", ImageRefKind.LOCAL_PATH),
        ("/abs/cat.png", ImageRefKind.LOCAL_PATH),
        ("C:/photos/cat.png", ImageRefKind.LOCAL_PATH),
        ("./cat:1.png", ImageRefKind.LOCAL_PATH),
    ],
)
def test_classify(value: str, kind: ImageRefKind) -> None:
    assert classify_image_ref(value).kind is kind


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "empty image reference"),
        ("  ", "empty image reference"),
        ("ftp://host/a.png", "unsupported scheme 'ftp'"),
        ("file:///etc/passwd", "unsupported scheme 'file'"),
        ("s3://bucket/a.png", "unsupported scheme 's3'"),
        ("https://", "URL has no host"),
        ("data:text/plain;base64,aGk=", "text/plain, not an image"),
        ("data:image/png,rawbytes", "not base64-encoded"),
        ("data:image/png;base64,@@@", "invalid base64"),
        ("data:nonsense", "malformed data URI"),
    ],
)
def test_refuse(value: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        classify_image_ref(value)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 1000])
def test_data_uri_size_without_decoding(size: int) -> None:
    uri = "data:image/png;base64," + base64.b64encode(b"x" * size).decode()
    assert data_uri_size_bytes(uri) == size


def test_ref_values_of_a_field() -> None:
    assert image_ref_values("a.png") == [(None, "a.png")]
    assert image_ref_values(["a.png", 3, "b.png"]) == [(0, "a.png"), (2, "b.png")]
    assert image_ref_values(None) == []
