import pytest

from jobs.job import Job, auto_job_id, canonical_json, check_user_id, fingerprint, variant_job_id, variant_name


def test_canonical_json_ignores_key_order_and_spacing() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": "é"}]}) == '{"a":[1,{"c":"é","d":2}],"b":1}'
    assert canonical_json({"a": 1, "b": 2}) == canonical_json({"b": 2, "a": 1})


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": float("inf")}, {"x": object()}])
def test_canonical_json_refuses_what_is_not_json(bad: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        canonical_json(bad)


def test_auto_id_is_stable_and_depends_on_endpoint_and_input() -> None:
    digest = fingerprint("fal-ai/a/b", canonical_json({"prompt": "x"}))
    assert digest == fingerprint("fal-ai/a/b", canonical_json({"prompt": "x"}))
    assert digest != fingerprint("fal-ai/a/c", canonical_json({"prompt": "x"}))
    assert digest != fingerprint("fal-ai/a/b", canonical_json({"prompt": "y"}))
    # Pinned: a change here renames every job of every batch already run.
    assert auto_job_id(fingerprint("fal-ai/a/b", '{"prompt":"x"}')) == auto_job_id(digest)
    assert len(auto_job_id(digest)) == 16
    assert variant_job_id("cat", digest) == f"cat-{digest[:8]}"


@pytest.mark.parametrize(("value", "text"), [("cat-1", "cat-1"), (42, "42"), ("A.b_c-9", "A.b_c-9")])
def test_user_ids_accepted(value: object, text: str) -> None:
    assert check_user_id(value) == text


@pytest.mark.parametrize("value", ["", "-lead", "has space", "a/b", "../x", "x" * 129, True, 1.5, None, "ü"])
def test_user_ids_that_cannot_name_a_file(value: object) -> None:
    with pytest.raises(ValueError):
        check_user_id(value)


def test_job_round_trips_through_a_dict() -> None:
    job = Job("j", "fal-ai/a", {"prompt": "x"}, "f" * 64, "m.csv", 2, 1, 1, {"_src": "s"})
    assert Job.from_dict(job.to_dict()) == job


def test_a_job_stored_before_names_and_matrix_values_loads_named_by_its_id() -> None:
    stored = {"id": "storm-c2cec3b2", "endpoint": "e", "input": {"prompt": "x"}, "fingerprint": "f", "file": "m.yaml",
              "line": 3, "row": 1, "variant": 1, "meta": {}}  # fmt: skip
    job = Job.from_dict(stored)
    assert (job.name, job.matrix, job.file_stem) == ("", {}, "storm-c2cec3b2")


@pytest.mark.parametrize(("combo", "name"), [
    ({"seed": 7}, "storm@seed7"),
    ({"seed": -1, "strength": 0.5, "enable_safety_checker": False}, "storm@seed-1-strength0.5-enable_safety_checkerfalse"),
    ({"image_size": "square_hd"}, "storm@image_sizesquare_hd"),
    ({"prompt": "a storm at night"}, None),
    ({"image_size": {"width": 512, "height": 512}}, None),
    ({"seed": None}, None),
    ({"tag": "x" * 25}, None),
    ({}, None),
])  # fmt: skip
def test_a_variant_is_named_by_short_plain_values_only(combo: dict[str, object], name: str | None) -> None:
    assert variant_name("storm", combo) == name
