from typing import Any

import pytest

from jobs.outputs import ModelOutput

IMAGE = {"url": "https://v3.fal.media/files/a.png", "content_type": "image/png"}


@pytest.mark.parametrize(
    ("payload", "urls", "seeds"),
    [
        ({"images": [IMAGE], "seeds": [175932751], "actual_prompt": "p"}, [IMAGE["url"]], [175932751]),
        ({"image": IMAGE, "seed": 7, "prompt": "p"}, [IMAGE["url"]], [7]),
        ({"images": [IMAGE, IMAGE], "seed": 3}, [IMAGE["url"]] * 2, [3]),
        ({"images": []}, [], []),
        ({}, [], []),
    ],
)
def test_singular_and_plural_forms(payload: dict[str, Any], urls: list[str], seeds: list[int]) -> None:
    output = ModelOutput.model_validate(payload)
    assert [image.url for image in output.images] == urls
    assert output.seeds == seeds


def test_seed_of_each_image() -> None:
    assert ModelOutput.model_validate({"images": [IMAGE] * 2, "seeds": [1, 2]}).seed_of(1) == 2
    assert ModelOutput.model_validate({"images": [IMAGE] * 2, "seed": 5}).seed_of(1) == 5
    assert ModelOutput.model_validate({"images": [IMAGE] * 2}).seed_of(0) is None


def test_unknown_fields_are_kept() -> None:
    payload = {"images": [{**IMAGE, "width": 8, "blurhash": "x"}], "seeds": [1], "timings": {"inference": 1.2}}
    output = ModelOutput.model_validate(payload)
    assert output.model_extra == {"timings": {"inference": 1.2}}
    assert output.images[0].width == 8
    assert output.images[0].model_extra == {"blurhash": "x"}
    assert output.model_dump(exclude_none=True)["timings"] == {"inference": 1.2}


@pytest.mark.parametrize(
    ("payload", "flags"),
    [
        ({"has_nsfw_concepts": [False, True]}, [False, True]),
        ({"nsfw_content_detected": True}, [True]),
        ({"has_nsfw_concepts": False}, [False]),
        ({}, None),
    ],
)
def test_safety_flags_where_present(payload: dict[str, Any], flags: list[bool] | None) -> None:
    output = ModelOutput.model_validate({"images": [IMAGE], **payload})
    assert output.has_nsfw_concepts == flags
    assert output.nsfw_of(0) == (flags[0] if flags else None)
