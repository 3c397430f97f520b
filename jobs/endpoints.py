"""The endpoints the runner knows, as pydantic input models, and pass-through for the rest.

The two Wan models follow the API pages in `shared/seeds/` (Wan 2.2 also
takes `seed` and `negative_prompt`, which its page omits). Any other fal
endpoint id (`owner/app[/path]`) runs as a pass-through: its input is sent as
given and its output parsed by the tolerant `jobs.outputs.ModelOutput`. An id
close to a known one is probably a typo of it: `close_known_endpoint` says so.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)

from jobs.diagnostics import shorten

WAN22_I2I = "fal-ai/wan/v2.2-a14b/image-to-image"
WAN25_I2I = "fal-ai/wan-25-preview/image-to-image"

_ENDPOINT_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(/[\w.-]+)*$")
_SIZE_SHORTHAND = re.compile(r"^\s*(\d+)\s*[xX\u00d7]\s*(\d+)\s*$")
#: difflib's ratio of two ids (lowercased) above which an unknown one is taken for a typo of a known one:
#: `wan-26-preview` for `wan-25-preview` (0.97) is; `.../image-to-video` for `.../image-to-image` (0.91) is not.
CLOSE_ENDPOINT_RATIO = 0.92


class _Input(BaseModel):
    """Base of the known endpoints' inputs: unknown fields and NaN are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=False)

    def warnings(self) -> list[tuple[str, str]]:
        """(field, message) pairs for inputs that are valid but probably not meant."""
        return []


class Wan22ImageToImageInput(_Input):
    """Input of `fal-ai/wan/v2.2-a14b/image-to-image` (seed 000_f92047dda0fe4212).

    `seed` and `negative_prompt` are not on that page, but fal's Wan 2.2 A14B endpoints take both.
    """

    image_url: str
    prompt: Annotated[str, Field(min_length=1)]
    strength: Annotated[float, Field(ge=0, le=1)] | None = None
    #: "auto" or a ratio such as "16:9"; the page gives no list, so only the form is checked.
    aspect_ratio: Annotated[str, Field(pattern=r"^(auto|\d{1,2}:\d{1,2})$")] | None = None
    num_inference_steps: Annotated[int, Field(ge=1)] | None = None
    enable_safety_checker: bool | None = None
    enable_prompt_expansion: bool | None = None
    acceleration: Literal["regular", "none"] | None = None
    guidance_scale: Annotated[float, Field(ge=0)] | None = None
    guidance_scale_2: Annotated[int, Field(ge=0)] | None = None
    shift: Annotated[int, Field(ge=0)] | None = None
    image_format: Literal["jpeg", "png"] | None = None
    negative_prompt: Annotated[str, Field(max_length=500)] | None = None
    seed: Annotated[int, Field(ge=0)] | None = None


class ImageSize(BaseModel):
    """A custom output size; both sides 384..5000 pixels."""

    model_config = ConfigDict(extra="forbid")

    width: Annotated[int, Field(ge=384, le=5000)]
    height: Annotated[int, Field(ge=384, le=5000)]


ImageSizePreset = Literal[
    "square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"
]
#: The width and height of each preset, as fal's image models make them.
IMAGE_SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}


def _size_branch(value: Any) -> str:
    # Report errors of the form the user wrote (a preset name or an object), not of both.
    return "ImageSize" if isinstance(value, dict | ImageSize) else "ImageSizePreset"


ImageSizeValue = Annotated[
    Annotated[ImageSizePreset, Tag("ImageSizePreset")] | Annotated[ImageSize, Tag("ImageSize")],
    Discriminator(_size_branch),
]


class Wan25ImageToImageInput(_Input):
    """Input of `fal-ai/wan-25-preview/image-to-image` (seed 004_fc17efdcc8011f4b)."""

    prompt: Annotated[str, Field(min_length=1, max_length=2000)]
    image_urls: Annotated[list[str], Field(min_length=1)]
    negative_prompt: Annotated[str, Field(max_length=500)] | None = None
    image_size: ImageSizeValue | None = None
    num_images: Annotated[int, Field(ge=1, le=4)] | None = None
    seed: Annotated[int, Field(ge=0)] | None = None

    @field_validator("image_size", mode="before")
    @classmethod
    def _size_shorthand(cls, value: Any) -> Any:
        """Accept "1280x720" for {"width": 1280, "height": 720}."""
        if isinstance(value, str) and (match := _SIZE_SHORTHAND.match(value)):
            return {"width": int(match[1]), "height": int(match[2])}
        return value

    def warnings(self) -> list[tuple[str, str]]:
        if len(self.image_urls) > 2:
            return [("image_urls", f"{len(self.image_urls)} images given; the model uses only the first 2")]
        return []


class FieldKind(str, Enum):
    """How a text cell (CSV) becomes a value of the field."""

    #: Several values separated by `|`; a single YAML/JSON value becomes a one-item list.
    LIST = "list"
    #: A JSON object in the cell, or a string the model itself parses (e.g. "1280x720").
    OBJECT = "object"
    #: The cell text as it stands; the model parses numbers and booleans.
    SCALAR = "scalar"


@dataclass(frozen=True)
class Endpoint:
    """A fal endpoint: its id, input model (None for pass-through) and image fields."""

    id: str
    input_model: type[_Input] | None
    image_fields: tuple[str, ...]
    field_kinds: dict[str, FieldKind] = field(default_factory=dict)

    @property
    def is_known(self) -> bool:
        return self.input_model is not None

    @property
    def app(self) -> str:
        """`owner/app`: the part fal keeps in status, result and cancel URLs."""
        return "/".join(self.id.split("/")[:2])

    def field_names(self) -> list[str]:
        return list(self.input_model.model_fields) if self.input_model else []

    def validate_input(self, raw: dict[str, Any]) -> ValidatedInput:
        """Check `raw` against the input model; the body holds only the fields given."""
        if self.input_model is None:
            return ValidatedInput(body=raw, errors=[], warnings=[])
        try:
            model = self.input_model.model_validate(raw)
        except ValidationError as exc:
            return ValidatedInput(body={}, errors=self._explain(exc), warnings=[])
        body = model.model_dump(mode="json", exclude_unset=True)
        return ValidatedInput(body=body, errors=[], warnings=model.warnings())

    def _explain(self, exc: ValidationError) -> list[tuple[str, str]]:
        errors = []
        for err in exc.errors(include_url=False):
            loc = [str(part) for part in err["loc"]]
            name = _field_path(loc)
            if err["type"] == "extra_forbidden":
                errors.append((name, self._unknown_field_message(loc)))
            elif err["type"] == "missing":
                errors.append((name, "required field is missing"))
            else:
                errors.append((name, _value_message(err)))
        return errors

    def _unknown_field_message(self, loc: list[str]) -> str:
        """`loc` is pydantic's: the field as written, then (when nested) the model it tried and the key."""
        name, known = loc[-1], self.field_names()
        if len(loc) > 1 and self.input_model is not None:
            parent = self.input_model.model_fields.get(loc[0])
            known = _model_fields_in(parent.annotation) if parent is not None else []
        message = f"unknown field for {self.id}"
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        if close:
            return f"{message}; did you mean '{close[0]}'?"
        return f"{message}; known fields: {', '.join(known)}"


@dataclass(frozen=True)
class ValidatedInput:
    """The request body to send, or (field, message) errors; plus warnings."""

    body: dict[str, Any]
    errors: list[tuple[str, str]]
    warnings: list[tuple[str, str]]


def _field_path(loc: list[str]) -> str:
    """`['image_size', 'ImageSize', 'width']` -> `image_size.width`; list indexes as `[0]`.

    The first part is a field as the user wrote it (`Prompt`, `foo.bar`), kept as it stands.
    """
    parts: list[str] = loc[:1]
    for part in loc[1:]:
        if part.isdigit():
            parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
        elif part[:1].isupper() or part.startswith(("literal[", "function-")):
            continue  # pydantic names the union member it tried; the user never wrote it
        else:
            parts.append(part)
    return ".".join(parts)


def _value_message(err: Any) -> str:
    message = str(err["msg"])
    if "input" in err and not isinstance(err["input"], dict):
        message += f" (got {shorten(err['input'])})"
    return message


def _model_fields_in(annotation: Any) -> list[str]:
    """Field names of the pydantic models inside an annotation (e.g. ImageSize in a union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return [name for arg in typing.get_args(annotation) for name in _model_fields_in(arg)]


def _kind_of(annotation: Any) -> FieldKind:
    """The FieldKind of a field's annotation, looking through Optional/Union/Annotated."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _kind_of(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        kinds = {_kind_of(arg) for arg in typing.get_args(annotation)}
        return next((k for k in (FieldKind.LIST, FieldKind.OBJECT) if k in kinds), FieldKind.SCALAR)
    if origin is list or annotation is list:
        return FieldKind.LIST
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return FieldKind.OBJECT
    return FieldKind.SCALAR


def _known(endpoint_id: str, model: type[_Input], image_fields: tuple[str, ...]) -> Endpoint:
    kinds = {name: _kind_of(f.annotation) for name, f in model.model_fields.items()}
    return Endpoint(endpoint_id, model, image_fields, kinds)


KNOWN_ENDPOINTS: dict[str, Endpoint] = {
    WAN22_I2I: _known(WAN22_I2I, Wan22ImageToImageInput, ("image_url",)),
    WAN25_I2I: _known(WAN25_I2I, Wan25ImageToImageInput, ("image_urls",)),
}


def is_endpoint_id(value: str) -> bool:
    """Whether `value` has the form of a fal endpoint id, `owner/app[/path]`."""
    return bool(_ENDPOINT_ID.match(value))


def resolve_endpoint(endpoint_id: str) -> Endpoint:
    """The known endpoint of that id, or a pass-through one.

    Raises ValueError when the id is not of the form `owner/app[/path]`.
    """
    known = KNOWN_ENDPOINTS.get(endpoint_id)
    if known is not None:
        return known
    if not is_endpoint_id(endpoint_id):
        raise ValueError(f"not a fal endpoint id (owner/app[/path]): {endpoint_id!r}")
    return Endpoint(endpoint_id, None, _guess_image_fields())


def close_known_endpoint(endpoint_id: str) -> str | None:
    """The known endpoint id that an unknown `endpoint_id` is probably a typo of, or None."""
    if endpoint_id in KNOWN_ENDPOINTS or any(endpoint_id.startswith(f"{known}/") for known in KNOWN_ENDPOINTS):
        return None  # a known id itself, or a path below it (a variant fal serves there)
    by_lower = {known.lower(): known for known in KNOWN_ENDPOINTS}
    close = difflib.get_close_matches(endpoint_id.lower(), by_lower, n=1, cutoff=CLOSE_ENDPOINT_RATIO)
    return by_lower[close[0]] if close else None


def _guess_image_fields() -> tuple[str, ...]:
    # A pass-through endpoint has no schema; fal names its image inputs like these.
    return ("image_url", "image_urls", "input_image_url", "reference_image_url", "mask_url")
