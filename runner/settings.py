"""Settings of the runner, grouped so functions take one object, not thirty arguments."""

from __future__ import annotations

from pydantic import BaseModel, Field

MIB = 1024 * 1024


class InputSettings(BaseModel):
    """How a job's inputs are checked and prepared before they are sent."""

    #: A local image or data URI above this size is refused (fal slows on large bodies).
    max_image_bytes: int = Field(default=10 * MIB, gt=0)
