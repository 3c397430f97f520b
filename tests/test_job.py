import pytest

from jobs.job import Job, auto_job_id, canonical_json, check_user_id, fingerprint, variant_job_id


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
