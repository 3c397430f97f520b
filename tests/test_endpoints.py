from typing import Any

import pytest

from jobs.endpoints import (
    KNOWN_ENDPOINTS,
    WAN22_I2I,
    WAN25_I2I,
    FieldKind,
    close_known_endpoint,
    is_endpoint_id,
    resolve_endpoint,
)

WAN22 = KNOWN_ENDPOINTS[WAN22_I2I]
WAN25 = KNOWN_ENDPOINTS[WAN25_I2I]
BASE22 = {"prompt": "a city", "image_url": "https://x/a.png"}
BASE25 = {"prompt": "a city", "image_urls": ["https://x/a.png"]}


@pytest.mark.parametrize(
    ("extra", "body"),
    [
        ({}, BASE22),
        ({"strength": "0.5"}, {**BASE22, "strength": 0.5}),
        ({"strength": 1}, {**BASE22, "strength": 1.0}),
        ({"num_inference_steps": "27"}, {**BASE22, "num_inference_steps": 27}),
        ({"enable_safety_checker": "false"}, {**BASE22, "enable_safety_checker": False}),
        ({"enable_prompt_expansion": "yes"}, {**BASE22, "enable_prompt_expansion": True}),
        ({"acceleration": "none"}, {**BASE22, "acceleration": "none"}),
        ({"aspect_ratio": "16:9"}, {**BASE22, "aspect_ratio": "16:9"}),
        ({"guidance_scale": "3.5", "guidance_scale_2": "4", "shift": 2},
         {**BASE22, "guidance_scale": 3.5, "guidance_scale_2": 4, "shift": 2}),
        ({"image_format": "png"}, {**BASE22, "image_format": "png"}),
        ({"seed": "42", "negative_prompt": "blurry"}, {**BASE22, "seed": 42, "negative_prompt": "blurry"}),
        ({"seed": 0, "negative_prompt": "n" * 500}, {**BASE22, "seed": 0, "negative_prompt": "n" * 500}),
    ],
)  # fmt: skip
def test_wan22_accepts_and_types_by_schema(extra: dict[str, Any], body: dict[str, Any]) -> None:
    result = WAN22.validate_input({**BASE22, **extra})
    assert result.errors == []
    assert result.body == body


@pytest.mark.parametrize(
    ("extra", "field", "fragment"),
    [
        ({"strength": 1.5}, "strength", "less than or equal to 1"),
        ({"strength": "strong"}, "strength", "valid number"),
        ({"acceleration": "fast"}, "acceleration", "'regular' or 'none'"),
        ({"image_format": "webp"}, "image_format", "'jpeg' or 'png'"),
        ({"aspect_ratio": "16x9"}, "aspect_ratio", "pattern"),
        ({"num_inference_steps": 2.5}, "num_inference_steps", "integer"),
        ({"enable_safety_checker": "maybe"}, "enable_safety_checker", "boolean"),
        ({"guidance_scale": float("nan")}, "guidance_scale", "finite number"),
        ({"strenght": 0.5}, "strenght", "did you mean 'strength'?"),
        ({"num_images": 3}, "num_images", "known fields: image_url, prompt"),
        ({"seed": "lucky"}, "seed", "valid integer"),
        ({"seed": 1.5}, "seed", "integer"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"negative_prompt": "n" * 501}, "negative_prompt", "at most 500"),
    ],
)
def test_wan22_rejects_with_field_and_reason(extra: dict[str, Any], field: str, fragment: str) -> None:
    result = WAN22.validate_input({**BASE22, **extra})
    assert [name for name, _ in result.errors] == [field]
    assert fragment in result.errors[0][1]


@pytest.mark.parametrize("missing", ["prompt", "image_url"])
def test_wan22_required_fields(missing: str) -> None:
    raw = {k: v for k, v in BASE22.items() if k != missing}
    assert WAN22.validate_input(raw).errors == [(missing, "required field is missing")]


@pytest.mark.parametrize(
    ("extra", "body"),
    [
        ({"image_size": "landscape_16_9"}, {**BASE25, "image_size": "landscape_16_9"}),
        ({"image_size": {"width": 1280, "height": "720"}},
         {**BASE25, "image_size": {"width": 1280, "height": 720}}),
        ({"image_size": "1280x720"}, {**BASE25, "image_size": {"width": 1280, "height": 720}}),
        ({"num_images": "4", "seed": "17"}, {**BASE25, "num_images": 4, "seed": 17}),
        ({"negative_prompt": "n" * 500}, {**BASE25, "negative_prompt": "n" * 500}),
        ({"prompt": "p" * 2000}, {**BASE25, "prompt": "p" * 2000}),
    ],
)  # fmt: skip
def test_wan25_accepts(extra: dict[str, Any], body: dict[str, Any]) -> None:
    result = WAN25.validate_input({**BASE25, **extra})
    assert result.errors == []
    assert result.body == body


@pytest.mark.parametrize(
    ("extra", "field", "fragment"),
    [
        ({"prompt": ""}, "prompt", "at least 1 character"),
        ({"prompt": "p" * 2001}, "prompt", "at most 2000"),
        ({"negative_prompt": "n" * 501}, "negative_prompt", "at most 500"),
        ({"image_urls": []}, "image_urls", "at least 1 item"),
        ({"image_size": "squar"}, "image_size", "'square_hd', 'square'"),
        ({"image_size": {"width": 383, "height": 720}}, "image_size.width", "greater than or equal to 384"),
        ({"image_size": {"width": 720, "height": 5001}}, "image_size.height", "less than or equal to 5000"),
        ({"image_size": {"width": 720, "height": 720, "dept": 3}}, "image_size.dept", "known fields: width, height"),
        ({"image_size": "100x720"}, "image_size.width", "greater than or equal to 384"),
        ({"num_images": 5}, "num_images", "less than or equal to 4"),
        ({"num_images": 0}, "num_images", "greater than or equal to 1"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"image_url": "https://x/a.png"}, "image_url", "did you mean 'image_urls'?"),
    ],
)
def test_wan25_rejects_with_field_and_reason(extra: dict[str, Any], field: str, fragment: str) -> None:
    result = WAN25.validate_input({**BASE25, **extra})
    assert [name for name, _ in result.errors] == [field]
    assert fragment in result.errors[0][1]


def test_nested_typo_gets_a_hint_from_the_nested_model() -> None:
    result = WAN25.validate_input({**BASE25, "image_size": {"width": 720, "heigth": 720}})
    assert result.errors == [
        ("image_size.height", "required field is missing"),
        ("image_size.heigth", f"unknown field for {WAN25_I2I}; did you mean 'height'?"),
    ]


def test_wan25_warns_that_only_two_images_are_used() -> None:
    result = WAN25.validate_input({**BASE25, "image_urls": ["https://x/1", "https://x/2", "https://x/3"]})
    assert result.errors == []
    assert result.warnings == [("image_urls", "3 images given; the model uses only the first 2")]
    assert WAN25.validate_input({**BASE25, "image_urls": ["https://x/1", "https://x/2"]}).warnings == []


def test_field_kinds_come_from_the_schema() -> None:
    assert WAN25.field_kinds["image_urls"] is FieldKind.LIST
    assert WAN25.field_kinds["image_size"] is FieldKind.OBJECT
    assert WAN25.field_kinds["seed"] is FieldKind.SCALAR
    assert set(WAN22.field_kinds.values()) == {FieldKind.SCALAR}


@pytest.mark.parametrize(
    ("endpoint_id", "app"),
    [(WAN22_I2I, "fal-ai/wan"), (WAN25_I2I, "fal-ai/wan-25-preview"), ("fal-ai/flux/dev", "fal-ai/flux")],
)
def test_app_is_owner_and_app(endpoint_id: str, app: str) -> None:
    assert resolve_endpoint(endpoint_id).app == app


def test_other_endpoints_pass_through_as_given() -> None:
    endpoint = resolve_endpoint("fal-ai/flux/dev/image-to-image")
    assert not endpoint.is_known
    body = {"prompt": "x", "anything": {"nested": [1, 2]}}
    assert endpoint.validate_input(body).body == body


@pytest.mark.parametrize(
    ("value", "ok"),
    [("fal-ai/flux", True), ("owner/app/path/deeper", True), ("fal-ai", False), ("/fal-ai/x", False),
     ("fal ai/x", False), ("fal-ai//x", False), ("", False), ("https://queue.fal.run/fal-ai/x", False)],
)  # fmt: skip
def test_endpoint_id_form(value: str, ok: bool) -> None:
    assert is_endpoint_id(value) is ok
    if not ok:
        with pytest.raises(ValueError, match="not a fal endpoint id"):
            resolve_endpoint(value)


@pytest.mark.parametrize(
    ("endpoint", "key", "name", "fragment"),
    [
        (WAN22, "foo.bar", "foo.bar", "known fields: image_url, prompt"),
        (WAN22, "image_size.width", "image_size.width", "known fields: image_url, prompt"),
        (WAN25, "image_size.width", "image_size.width", "did you mean 'image_size'?"),
        (WAN25, "seed.", "seed.", "did you mean 'seed'?"),
        (WAN22, "a[0]", "a[0]", "known fields"),
        (WAN22, "Prompt", "Prompt", "did you mean 'prompt'?"),
        (WAN22, "0", "0", "known fields"),
    ],
)  # fmt: skip
def test_unknown_fields_are_named_as_written(endpoint: Any, key: str, name: str, fragment: str) -> None:
    """A dot in a field's name is not a path into a model (it raised KeyError), nor is a capital a union tag."""
    base = BASE22 if endpoint is WAN22 else BASE25
    result = endpoint.validate_input({**base, key: 1})
    assert [field for field, _ in result.errors] == [name]
    assert fragment in result.errors[0][1]


def test_an_unknown_key_with_a_dot_inside_a_nested_model() -> None:
    result = WAN25.validate_input({**BASE25, "image_size": {"width": 720, "height": 720, "widt.h": 1}})
    assert result.errors == [("image_size.widt.h", f"unknown field for {WAN25_I2I}; did you mean 'width'?")]


@pytest.mark.parametrize(
    ("endpoint_id", "close"),
    [
        ("fal-ai/wan-26-preview/image-to-image", WAN25_I2I),
        ("fal-ai/wan-2.5-preview/image-to-image", WAN25_I2I),
        ("fal-ai/WAN-25-preview/image-to-image", WAN25_I2I),
        ("fal-ai/wan/v2.3-a14b/image-to-image", WAN22_I2I),
        (WAN25_I2I, None),
        (WAN22_I2I, None),
        ("fal-ai/wan-25-preview/image-to-video", None),
        ("fal-ai/wan/v2.2-a14b/image-to-video", None),
        ("fal-ai/wan-25-preview/text-to-image", None),
        ("fal-ai/flux/dev/image-to-image", None),
    ],
)
def test_an_id_close_to_a_known_one_is_taken_for_a_typo(endpoint_id: str, close: str | None) -> None:
    assert close_known_endpoint(endpoint_id) == close
