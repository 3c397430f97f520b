"""The pixels of simulated outputs: real images, cheap to make, the same for the same seed."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import random
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote_to_bytes

from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

ImageFormat = Literal["png", "jpeg"]
_MIME = {"png": "image/png", "jpeg": "image/jpeg"}
_TINT_ALPHA = 0.3


@dataclass(frozen=True)
class FileSpec:
    """One output file to render: size, format and the seed that varies it."""

    width: int
    height: int
    fmt: ImageFormat
    seed: int

    @property
    def content_type(self) -> str:
        return _MIME[self.fmt]

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def data_uri_bytes(ref: str) -> bytes | None:
    """The payload of a `data:` URI (base64 or percent-encoded), or None when `ref` is not a well-formed one."""
    if not ref.startswith("data:"):
        return None
    header, comma, payload = ref.partition(",")
    if not comma:
        return None
    if not header.endswith(";base64"):
        return unquote_to_bytes(payload)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None


def decode_image(data: bytes) -> Image.Image | None:
    """An RGB image from encoded bytes, or None when they are not a readable image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def render_file(source: Image.Image | None, fallback_key: str, spec: FileSpec) -> bytes:
    """Encode one output: `source` (or a pattern from `fallback_key`) fitted and varied by seed."""
    if source is not None:
        base = ImageOps.fit(source, spec.size, Image.Resampling.BILINEAR)
    else:
        base = _pattern(fallback_key, spec.size)
    image = _vary(base, spec.seed)
    buffer = io.BytesIO()
    if spec.fmt == "png":
        image.save(buffer, format="PNG", compress_level=1)
    else:
        image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _pattern(key: str, size: tuple[int, int]) -> Image.Image:
    """A smooth gradient whose colours derive from `key` (an input the simulator cannot read)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    ramp = Image.linear_gradient("L")
    red = ramp.point(lambda value: (value + digest[0]) % 256)
    green = ramp.transpose(Image.Transpose.ROTATE_90)
    blue = Image.new("L", ramp.size, digest[1])
    return Image.merge("RGB", (red, green, blue)).resize(size, Image.Resampling.BILINEAR)


def _vary(image: Image.Image, seed: int) -> Image.Image:
    """Tint the image and stamp a block, both chosen by `seed`."""
    rng = random.Random(seed)
    tint = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    varied = Image.blend(image, Image.new("RGB", image.size, tint), _TINT_ALPHA)
    width, height = image.size
    block_w, block_h = max(1, width // 5), max(1, height // 5)
    left, top = rng.randrange(width - block_w + 1), rng.randrange(height - block_h + 1)
    inverse = (255 - tint[0], 255 - tint[1], 255 - tint[2])
    ImageDraw.Draw(varied).rectangle((left, top, left + block_w - 1, top + block_h - 1), fill=inverse)
    return varied
