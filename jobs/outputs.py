"""What fal returns for a finished request, read tolerantly.

Accepts `images[]` or a single `image`, `seeds[]` or a single `seed`, and
keeps every field it does not know (a pass-through endpoint's extras, new
fields fal adds) instead of dropping it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class OutputImage(BaseModel):
    """One output file as fal describes it; only `url` is always there."""

    model_config = ConfigDict(extra="allow")

    url: str
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None
    width: int | None = None
    height: int | None = None


class ModelOutput(BaseModel):
    """A model's result: images, seeds, prompt and safety flags, plus any other field."""

    model_config = ConfigDict(extra="allow")

    images: list[OutputImage] = []
    seeds: list[int] = []
    actual_prompt: str | None = None
    prompt: str | None = None
    has_nsfw_concepts: list[bool] | None = None

    @model_validator(mode="before")
    @classmethod
    def _singular_forms(cls, data: Any) -> Any:
        """Fold `image` into `images` and `seed` into `seeds`; other endpoints use them."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "images" not in data and isinstance(data.get("image"), dict):
            data["images"] = [data.pop("image")]
        if "seeds" not in data and isinstance(data.get("seed"), int):
            data["seeds"] = [data.pop("seed")]
        for flag in ("has_nsfw_concepts", "nsfw_content_detected"):
            if isinstance(data.get(flag), bool):
                data[flag] = [data[flag]]
        if "has_nsfw_concepts" not in data and "nsfw_content_detected" in data:
            data["has_nsfw_concepts"] = data["nsfw_content_detected"]
        return data

    def seed_of(self, index: int) -> int | None:
        """The seed of the `index`-th image; one seed for all when fal returns only one."""
        if index < len(self.seeds):
            return self.seeds[index]
        return self.seeds[0] if len(self.seeds) == 1 else None

    def nsfw_of(self, index: int) -> bool | None:
        flags = self.has_nsfw_concepts
        if not flags:
            return None
        return flags[index] if index < len(flags) else flags[0]
