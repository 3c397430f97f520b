from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture
def make_image(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a real image file under tmp_path and return its path."""

    def make(name: str, size: tuple[int, int] = (32, 24), fmt: str = "PNG") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (120, 30, 200)).save(path, format=fmt)
        return path

    return make
