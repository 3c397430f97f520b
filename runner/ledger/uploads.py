"""Local images uploaded to fal storage, in Redis: which content each batch's paths held, and the live uploads.

An upload is kept by the SHA-256 of its bytes, for every batch, rerun and
machine that shares the Redis, and expires from Redis when it may no longer
be sent (some time before fal drops the file). A batch keeps, per path its
manifest names, which content that was, so that a worker sends the upload's
URL without ever reading the file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import cast

import redis
from pydantic import BaseModel

from runner.ledger.keys import Keys


class LocalImage(BaseModel):
    """A local image as it was when its batch was recorded."""

    sha256: str
    bytes: int
    width: int
    height: int
    mime: str


#: A request reads its input images when it starts, up to its start deadline after the submit, and then some:
#: an upload is sent only if it outlives the deadline by this much.
READ_MARGIN_S = 900.0


class Upload(BaseModel):
    """An image's copy on fal storage."""

    url: str
    #: Unix seconds when fal drops it (its lifecycle from the upload).
    expires_at: float


class Uploads:
    """The live uploads to one fal storage, by content (a simulator's die with it: each storage has its own)."""

    def __init__(self, client: redis.Redis, keys: Keys, storage_url: str) -> None:
        self.redis = client
        self.keys = keys
        self.storage_url = storage_url

    def live(self, sha256s: Iterable[str], needed_until: float) -> dict[str, Upload]:
        """The uploads of these contents that fal still holds at `needed_until`."""
        wanted = list(dict.fromkeys(sha256s))
        if not wanted:
            return {}
        keys = [self.keys.upload(self.storage_url, sha) for sha in wanted]
        found = cast(list[bytes | None], self.redis.mget(keys))
        uploads = {sha: Upload.model_validate_json(raw) for sha, raw in zip(wanted, found, strict=True) if raw}
        return {sha: upload for sha, upload in uploads.items() if upload.expires_at >= needed_until}

    def remember(self, sha256: str, upload: Upload, now: float) -> None:
        """Keep `upload` for every batch until fal drops it."""
        life_s = math.floor(upload.expires_at - now)
        if life_s > 0:
            self.redis.set(self.keys.upload(self.storage_url, sha256), upload.model_dump_json(), ex=life_s)


class BatchImages:
    """What each local image path of a batch held when it was recorded."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    def save(self, batch_id: str, images: Mapping[str, LocalImage]) -> None:
        """What each local path of the batch holds (a rerun records what they hold now)."""
        if images:
            self.redis.hset(self.keys.images(batch_id), mapping={ref: image.model_dump_json()
                                                                  for ref, image in images.items()})  # fmt: skip

    def of(self, batch_id: str) -> dict[str, LocalImage]:
        raw = cast(dict[bytes, bytes], self.redis.hgetall(self.keys.images(batch_id)))
        return {ref.decode(): LocalImage.model_validate_json(value) for ref, value in raw.items()}

    def urls(self, batch_id: str, refs: Iterable[str], uploads: Uploads, needed_until: float) -> dict[str, str | None]:
        """The URL to send for each local path of the batch: its content's upload if fal holds it until
        `needed_until`, else None (never recorded, or it expires too soon)."""
        wanted = list(dict.fromkeys(refs))
        if not wanted:
            return {}
        raw = cast(list[bytes | None], self.redis.hmget(self.keys.images(batch_id), wanted))
        shas = {ref: LocalImage.model_validate_json(value).sha256 for ref, value in zip(wanted, raw, strict=True)
                if value}  # fmt: skip
        live = uploads.live(shas.values(), needed_until)
        return {ref: live[shas[ref]].url if ref in shas and shas[ref] in live else None for ref in wanted}


def image_sizes(images: Mapping[str, LocalImage]) -> dict[str, str]:
    """Each local path's pixel size as the report shows it: `1024x768`."""
    return {ref: f"{image.width}x{image.height}" for ref, image in images.items()}
