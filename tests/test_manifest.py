"""Expansion, typing, validation and ids of whole manifests, plus property tests."""

import csv
import io
import json
import string
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.batch import Batch
from jobs.endpoints import WAN22_I2I, WAN25_I2I
from jobs.job import variant_job_id
from jobs.manifest import ManifestOptions, parse_manifest

URL = "https://x.test/a.png"


def parse(name: str, text: str, endpoint: str | None = None) -> Batch:
    return parse_manifest(name, text.encode(), ManifestOptions(default_endpoint=endpoint))


def messages(batch: Batch) -> list[str]:
    return [str(d) for d in batch.diagnostics]


def test_matrix_is_a_cross_product_over_defaults() -> None:
    batch = parse("m.yaml", f"""
endpoint: {WAN25_I2I}
defaults: {{negative_prompt: blurry, num_images: 2}}
matrix:
  prompt: [a, b]
  image_urls: [{URL}, [{URL}, {URL}]]
  seed: [1, 2, 3]
""")
    assert messages(batch) == []
    assert len(batch.jobs) == 12
    assert {(j.input["prompt"], len(j.input["image_urls"]), j.input["seed"]) for j in batch.jobs} == {
        (p, n, s) for p in "ab" for n in (1, 2) for s in (1, 2, 3)
    }
    assert all(j.input["negative_prompt"] == "blurry" and j.input["num_images"] == 2 for j in batch.jobs)
    assert batch.matrix_expansion() == (1, 12)


def test_a_rows_own_values_win_over_matrix_and_defaults() -> None:
    batch = parse("m.yaml", f"""
endpoint: {WAN25_I2I}
defaults: {{image_size: square, seed: 9}}
matrix: {{seed: [1, 2]}}
jobs:
  - {{prompt: crossed, image_urls: {URL}}}
  - {{prompt: own seed, image_urls: {URL}, seed: 5, image_size: square_hd}}
""")
    assert messages(batch) == []
    summary = [(j.input["prompt"], j.input["seed"], j.input["image_size"], j.row, j.variant) for j in batch.jobs]
    assert summary == [
        ("crossed", 1, "square", 1, 1),
        ("crossed", 2, "square", 1, 2),
        ("own seed", 5, "square_hd", 2, 1),
    ]
    assert batch.records == 2
    assert batch.matrix_expansion() == (1, 2)


def test_the_same_job_gets_the_same_id_from_every_format() -> None:
    """CSV text is typed by the schema, so "0.50" in a CSV is 0.5 in YAML."""
    csv_batch = parse("m.csv", f"prompt,image_url,strength,enable_safety_checker\ncity,{URL},0.50,TRUE\n", WAN22_I2I)
    jsonl_batch = parse("m.jsonl", json.dumps({"endpoint": WAN22_I2I, "prompt": "city", "image_url": URL,
                                               "strength": 0.5, "enable_safety_checker": True}))  # fmt: skip
    yaml_batch = parse("m.yaml", f"endpoint: {WAN22_I2I}\njobs:\n- {{prompt: city, image_url: '{URL}', "
                                 "strength: 0.5, enable_safety_checker: yes}\n")  # fmt: skip
    ids = {b.jobs[0].id for b in (csv_batch, jsonl_batch, yaml_batch)}
    inputs = [b.jobs[0].input for b in (csv_batch, jsonl_batch, yaml_batch)]
    assert len(ids) == 1
    assert inputs[0] == inputs[1] == inputs[2] == {
        "image_url": URL, "prompt": "city", "strength": 0.5, "enable_safety_checker": True,
    }  # fmt: skip


def test_csv_list_and_object_cells() -> None:
    text = (
        "prompt,image_urls,image_size,seed\n"
        f'a,{URL}| {URL}b ,"{{""width"": 800, ""height"": 600}}",7\n'
        f"b,{URL},1024x768,\n"
    )
    batch = parse("m.csv", text, WAN25_I2I)
    assert messages(batch) == []
    assert batch.jobs[0].input == {"prompt": "a", "image_urls": [URL, URL + "b"],
                                   "image_size": {"width": 800, "height": 600}, "seed": 7}  # fmt: skip
    assert batch.jobs[1].input == {"prompt": "b", "image_urls": [URL], "image_size": {"width": 1024, "height": 768}}


def test_every_error_at_once_with_line_and_field() -> None:
    text = (
        "id,prompt,image_url,strength,acceleraton\n"
        f"a,city,{URL},0.5,\n"
        f"b,,{URL},2,\n"
        "c,city,ftp://x/y.png,0.5,fast\n"
        f"a,city 2,{URL},0.5,\n"
    )
    batch = parse("rows.csv", text, WAN22_I2I)
    assert messages(batch) == [
        "rows.csv:3: prompt: required field is missing",
        "rows.csv:3: strength: Input should be less than or equal to 1 (got '2')",
        f"rows.csv:4: acceleraton: unknown field for {WAN22_I2I}; did you mean 'acceleration'?",
        "rows.csv:4: image_url: unsupported scheme 'ftp': use http(s), a data: URI or a file path",
        "rows.csv:5: id: duplicate id 'a' (first at line 2)",
    ]
    assert [job.id for job in batch.jobs] == ["a"], "only valid rows become jobs (for --skip-invalid)"


def test_errors_from_defaults_and_matrix_point_at_their_own_line_once() -> None:
    batch = parse("m.yaml", f"""endpoint: {WAN25_I2I}
defaults:
  num_images: 9
matrix:
  seed: [1, -2]
jobs:
  - {{prompt: a, image_urls: {URL}}}
  - {{prompt: b, image_urls: {URL}}}
""")
    assert messages(batch) == [
        "m.yaml:3: num_images: Input should be less than or equal to 4 (got 9)",
        "m.yaml:5: seed: Input should be greater than or equal to 0 (got -2)",
    ]
    assert batch.jobs == []


@pytest.mark.parametrize(
    ("text", "endpoint", "expected"),
    [
        ("prompt\nx\n", None, "m.csv:2: endpoint: no endpoint: add an `endpoint` column/key or pass --endpoint"),
        ("endpoint,prompt\nnot an id,x\n", None, "m.csv:2: endpoint: not a fal endpoint id (owner/app[/path]): 'not an id'"),
        ("id,prompt\nbad id,x\n", "a/b", "m.csv:2: id: 'bad id' is not a valid id"),
    ],
)  # fmt: skip
def test_row_level_errors(text: str, endpoint: str | None, expected: str) -> None:
    assert any(m.startswith(expected) for m in messages(parse("m.csv", text, endpoint)))


def test_endpoint_column_wins_over_the_option() -> None:
    text = f"endpoint,prompt,image_url,image_urls\n{WAN22_I2I},a,{URL},\n,b,,{URL}\n"
    batch = parse("m.csv", text, WAN25_I2I)
    assert messages(batch) == []
    assert [job.endpoint for job in batch.jobs] == [WAN22_I2I, WAN25_I2I]
    assert batch.jobs_per_endpoint() == {WAN22_I2I: 1, WAN25_I2I: 1}


def test_pass_through_endpoint_sends_inputs_as_given() -> None:
    batch = parse("m.csv", 'prompt,steps:json,loras:json\nx,28,"[{""path"": ""a""}]"\n', "fal-ai/flux/dev")
    assert messages(batch) == []
    assert batch.jobs[0].input == {"prompt": "x", "steps": 28, "loras": [{"path": "a"}]}


def test_meta_columns_travel_but_are_never_sent() -> None:
    batch = parse("m.csv", f"prompt,image_url,_source,_n\nx,{URL},cat-17,3\n", WAN22_I2I)
    assert batch.jobs[0].meta == {"_source": "cat-17", "_n": "3"}
    assert "_source" not in batch.jobs[0].input


def test_user_ids_are_kept_and_matrix_variants_get_stable_suffixes() -> None:
    text = f"endpoint: {WAN25_I2I}\nmatrix: {{seed: [1, 2]}}\njobs:\n- {{id: cat, prompt: a, image_urls: {URL}}}\n"
    first, again = parse("m.yaml", text), parse("m.yaml", text)
    ids = [job.id for job in first.jobs]
    assert ids == [job.id for job in again.jobs]
    assert len(set(ids)) == 2 and all(i.startswith("cat-") and len(i) == 12 for i in ids)
    single = parse("m.yaml", text.replace("seed: [1, 2]", "seed: [1]"))
    assert [job.id for job in single.jobs] == ["cat"]


def test_identical_rows_run_twice_with_numbered_ids_and_a_warning() -> None:
    batch = parse("m.csv", f"prompt,image_url\nx,{URL}\ny,{URL}\nx,{URL}\n", WAN22_I2I)
    first = batch.jobs[0].id
    assert [job.id for job in batch.jobs] == [first, batch.jobs[1].id, f"{first}-2"]
    assert messages(batch) == [f"m.csv:4: warning: same input as line 2; runs again as job '{first}-2'"]
    assert batch.errors == []


def test_auto_ids_do_not_depend_on_row_order() -> None:
    rows = [f"a,{URL}", f"b,{URL}", f"c,{URL}"]
    forward = parse("m.csv", "prompt,image_url\n" + "\n".join(rows), WAN22_I2I)
    backward = parse("m.csv", "prompt,image_url\n" + "\n".join(reversed(rows)), WAN22_I2I)
    assert {j.input["prompt"]: j.id for j in forward.jobs} == {j.input["prompt"]: j.id for j in backward.jobs}


def test_a_matrix_too_large_is_refused_not_expanded() -> None:
    text = f"endpoint: {WAN25_I2I}\nmatrix:\n  prompt: [a, b, c]\n  seed: [1, 2, 3]\n  image_urls: [{URL}]\n"
    batch = parse_manifest("m.yaml", text.encode(), ManifestOptions(max_jobs=8))
    assert messages(batch) == ["m.yaml:2: matrix: its matrix expands to 9 jobs, more than 8: raise --max-jobs to run"
                               " them all, or split the manifest"]
    rows = "prompt,image_urls\n" + "".join(f"p{n},https://x.test/{n}.png\n" for n in range(9))
    many = parse_manifest("m.csv", rows.encode(), ManifestOptions(max_jobs=8, default_endpoint=WAN25_I2I))
    assert messages(many) == ["m.csv: it has 9 jobs, more than 8: raise --max-jobs to run them all, or split the"
                              " manifest"] and many.jobs == []
    assert batch.jobs == []


def test_warnings_do_not_stop_a_batch() -> None:
    batch = parse("m.jsonl", json.dumps({"prompt": "x", "image_urls": [URL, URL + "2", URL + "3"]}), WAN25_I2I)
    assert batch.errors == []
    assert messages(batch) == ["m.jsonl:1: warning: image_urls: 3 images given; the model uses only the first 2"]
    assert len(batch.jobs) == 1


# --- properties --------------------------------------------------------------

NAMES = st.sampled_from(["m.csv", "m.tsv", "m.jsonl", "m.yaml", "m.yml"])


def assert_located_or_valid(batch: Batch, name: str, data: bytes) -> None:
    """A batch is either runnable, or each of its errors names this file and a real line."""
    # Every line break YAML knows (it counts U+2028 and NEL too), so a superset of editors'.
    total_lines = len(data.decode("utf-8", "replace").splitlines()) + 1
    for diagnostic in batch.diagnostics:
        assert diagnostic.file == name
        assert diagnostic.line is None or 1 <= diagnostic.line <= total_lines
        assert diagnostic.message
    if not batch.errors:
        assert batch.jobs, "a batch without errors has jobs"
        assert len({job.id for job in batch.jobs}) == len(batch.jobs)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(name=NAMES, data=st.binary(max_size=400))
def test_random_bytes_give_located_errors_or_a_batch(name: str, data: bytes) -> None:
    batch = parse_manifest(name, data, ManifestOptions(default_endpoint="fal-ai/echo"))
    assert_located_or_valid(batch, name, data)


TEXTISH = st.text(alphabet=string.printable + "é|{}\"',:;\u2028\x00\x01\x1b\x7f\x85", max_size=30)
#: Field names a user may write that look like paths into a model (a dot raised KeyError) or like its tags.
ODD_NAMES = ["foo.bar", "image_size.width", "image_size.", "a[0]", "image_urls[1]", "Prompt", "ImageSize", "0", "seed\x00"]


class Raw(str):
    """A value written into the manifest as the text it holds, not as a string."""


#: Text put verbatim where a value goes, after the row is written: what no JSON or YAML writer makes.
RAW_VALUES = st.one_of(
    st.integers(1, 1000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(1, 1000).map(lambda depth: '{"a": ' * depth + "1" + "}" * depth),
    st.sampled_from(["9" * 5000, "-" + "9" * 4400, "1e400", "-1e400", "1.0e+400", "NaN", "Infinity"]),
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=NAMES,
    rows=st.lists(
        st.dictionaries(
            st.sampled_from(["id", "prompt", "image_url", "image_urls", "strength", "seed", "num_images",
                             "image_size", "endpoint", "promt", "_note", "negative_prompt", "pass_through",
                             "loras:json", *ODD_NAMES]),
            st.one_of(TEXTISH, st.integers(-5, 5000), st.floats(allow_nan=True), st.booleans(), st.none(),
                      st.lists(TEXTISH, max_size=3), RAW_VALUES.map(Raw)),
        ),
        max_size=6,
    ),
    endpoint=st.sampled_from([WAN22_I2I, WAN25_I2I, "fal-ai/other/app", "fal-ai/wan-26-preview/image-to-image"]),
)  # fmt: skip
def test_random_rows_give_located_errors_or_a_batch(name: str, rows: list[dict[str, Any]], endpoint: str) -> None:
    """Dotted and bracketed names, control characters, nesting to 1,000 levels, numbers past any range."""
    data = write_rows(name, rows)
    batch = parse_manifest(name, data, ManifestOptions(default_endpoint=endpoint))
    assert_located_or_valid(batch, name, data)


def write_rows(name: str, rows: list[dict[str, Any]]) -> bytes:
    if name.endswith((".csv", ".tsv")):
        return _write_csv(name, rows)  # a Raw value is cell text as it stands
    tokens: dict[str, str] = {}
    plain = [{key: _token_for(value, tokens) for key, value in row.items()} for row in rows]
    if name.endswith((".yaml", ".yml")):
        text = yaml.safe_dump({"jobs": plain}, allow_unicode=True)
    else:
        text = "\n".join(json.dumps(row) for row in plain)
    for token, raw in tokens.items():
        text = text.replace(f'"{token}"', raw).replace(token, raw)
    return text.encode()


def _token_for(value: Any, tokens: dict[str, str]) -> Any:
    if not isinstance(value, Raw):
        return value
    token = f"RAW{len(tokens)}X"
    tokens[token] = str(value)
    return token


def _write_csv(name: str, rows: list[dict[str, Any]]) -> bytes:
    columns = sorted({key for row in rows for key in row})
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t" if name.endswith(".tsv") else ",")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else str(row.get(c)) for c in columns])
    return out.getvalue().encode()


VALID_WAN25 = st.fixed_dictionaries(
    {"prompt": st.text(alphabet=string.ascii_letters + " ,.é", min_size=1, max_size=40).filter(str.strip),
     "image_urls": st.lists(st.sampled_from([URL, URL + "?v=2", "images/cat.png"]), min_size=1, max_size=2)},
    optional={"seed": st.integers(0, 2**31), "num_images": st.integers(1, 4),
              "image_size": st.sampled_from(["square", "landscape_16_9"])},
)  # fmt: skip


@settings(max_examples=100)
@given(rows=st.lists(VALID_WAN25, min_size=1, max_size=5, unique_by=lambda r: json.dumps(r, sort_keys=True)))
def test_valid_rows_give_the_same_jobs_in_every_format(rows: list[dict[str, Any]]) -> None:
    csv_rows = [{**row, "image_urls": "|".join(row["image_urls"])} for row in rows]
    batches = [
        parse_manifest(name, write_rows(name, csv_rows if name.endswith(("csv", "tsv")) else rows),
                       ManifestOptions(default_endpoint=WAN25_I2I))
        for name in ("m.csv", "m.tsv", "m.jsonl", "m.yaml")
    ]  # fmt: skip
    assert all(b.errors == [] for b in batches), [messages(b) for b in batches]
    expected = [(job.id, job.input) for job in batches[0].jobs]
    assert len(expected) == len(rows)
    for batch in batches[1:]:
        assert [(job.id, job.input) for job in batch.jobs] == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("?", "m.yaml:1: None: unknown top-level key"),
        ("1: x", "m.yaml:1: 1: unknown top-level key"),
        (f"endpoint: {WAN25_I2I}\ndefaults: {{1: 2}}\njobs: [{{prompt: x}}]", "m.yaml:2: defaults.1: a field name must be text"),
        (f"endpoint: {WAN25_I2I}\njobs:\n  - {{? , prompt: x}}", "m.yaml:3: jobs[0].None: a field name must be text"),
        (f"endpoint: {WAN25_I2I}\nmatrix: {{null: [1]}}", "m.yaml:2: matrix.None: a field name must be text"),
    ],
)
def test_yaml_keys_that_are_not_text_are_located_errors(body: str, expected: str) -> None:
    """YAML allows null and numbers as keys; a field name must be text (found by the random-bytes test)."""
    batch = parse_manifest("m.yaml", body.encode())
    assert any(str(d).startswith(expected) for d in batch.diagnostics), batch.diagnostics
    assert batch.errors


TYPO = "fal-ai/wan-26-preview/image-to-image"
DID_YOU_MEAN = f"endpoint: unknown endpoint '{TYPO}'; did you mean '{WAN25_I2I}'?"


@pytest.mark.parametrize(
    ("name", "text", "option", "expected"),
    [
        ("m.csv", f"endpoint,prompt\n{TYPO},x\n{TYPO},y\n", None, [f"m.csv:2: {DID_YOU_MEAN}", f"m.csv:3: {DID_YOU_MEAN}"]),
        ("m.csv", "prompt\nx\ny\n", TYPO, [f"m.csv: {DID_YOU_MEAN}"]),
        ("m.yaml", f"endpoint: {TYPO}\njobs: [{{prompt: x}}, {{prompt: y}}]\n", None, [f"m.yaml:1: {DID_YOU_MEAN}"]),
        ("m.jsonl", json.dumps({"endpoint": TYPO, "prompt": "x", "pass_through": "yes"}), None,
         ["m.jsonl:1: pass_through: must be true or false", f"m.jsonl:1: {DID_YOU_MEAN}"]),
    ],
)  # fmt: skip
def test_an_endpoint_close_to_a_known_one_is_an_error(name: str, text: str, option: str | None, expected: list[str]) -> None:
    """It validated as a pass-through, and every row then failed at fal with a 404."""
    batch = parse(name, text, option)
    assert [m.split(" If it is meant")[0] for m in messages(batch)] == expected
    assert f"--allow-endpoint {TYPO}" in messages(batch)[-1]
    assert batch.jobs == []


@pytest.mark.parametrize(
    ("name", "text", "allowed", "jobs", "errors"),
    [
        ("m.csv", f"endpoint,prompt\n{TYPO},x\n", {TYPO}, 1, 0),
        ("m.yaml", f"endpoint: {TYPO}\npass_through: true\njobs: [{{prompt: x}}, {{prompt: y}}]\n", set(), 2, 0),
        ("m.yaml", f"endpoint: {TYPO}\njobs: [{{prompt: x, pass_through: true}}, {{prompt: y}}]\n", set(), 1, 1),
        ("m.yaml", f"endpoint: {TYPO}\npass_through: true\njobs: [{{prompt: x, pass_through: false}}]\n", set(), 0, 1),
        ("m.csv", f"endpoint,prompt,pass_through\n{TYPO},x,TRUE\n{TYPO},y,false\n", set(), 1, 1),
        ("m.jsonl", json.dumps({"endpoint": TYPO, "prompt": "x", "pass_through": True}), set(), 1, 0),
    ],
)  # fmt: skip
def test_a_close_endpoint_confirmed_as_meant_passes_through(
    name: str, text: str, allowed: set[str], jobs: int, errors: int
) -> None:
    """`--allow-endpoint ID`, or `pass_through: true` for the manifest or a row (a row's own value wins)."""
    batch = parse_manifest(name, text.encode(), ManifestOptions(allowed_endpoints=frozenset(allowed)))
    assert len(batch.jobs) == jobs
    assert len(batch.errors) == errors
    assert all(job.endpoint == TYPO and "pass_through" not in job.input for job in batch.jobs)


def test_pass_through_is_checked_on_rows_of_known_endpoints_too() -> None:
    batch = parse("m.csv", f"prompt,image_url,pass_through\nx,{URL},maybe\n", WAN22_I2I)
    assert messages(batch) == ["m.csv:2: pass_through: must be true or false"]


def test_a_manifest_is_read_as_its_lines_arrive_and_jobs_need_not_be_kept() -> None:
    """Validation streams: it counts what it checked, holding no job, and reads each line once, in order."""
    read: list[int] = []

    def lines() -> Iterator[str]:
        yield "id,prompt,image_url,image_urls,endpoint\n"
        for n in range(1, 301):
            read.append(n)
            yield f"r{n},prompt {n},{URL},,{WAN22_I2I}\n" if n % 3 else f"r{n},prompt {n},,{URL},{WAN25_I2I}\n"

    counted = parse_manifest("m.csv", (line.encode() for line in lines()), keep_jobs=False)
    kept = parse_manifest("m.csv", "".join(lines()).encode())
    assert read == list(range(1, 301)) * 2
    assert counted.jobs == [] and counted.errors == [] and counted.records == 300
    assert counted.made.jobs == len(kept.jobs) == 300
    assert counted.jobs_per_endpoint() == kept.jobs_per_endpoint() == {WAN22_I2I: 200, WAN25_I2I: 100}


def test_counts_without_keeping_jobs_match_the_jobs_for_matrices_and_repeats() -> None:
    text = f"""endpoint: {WAN25_I2I}
defaults: {{image_urls: [{URL}]}}
matrix: {{seed: [1, 2, 3]}}
jobs:
  - {{id: a, prompt: x}}
  - {{prompt: y, seed: 9}}
  - {{prompt: y, seed: 9}}
"""
    counted = parse_manifest("m.yaml", text.encode(), keep_jobs=False)
    kept = parse_manifest("m.yaml", text.encode())
    assert counted.made == kept.made and counted.made.jobs == len(kept.jobs) == 5
    assert counted.matrix_expansion() == (1, 3)
    assert messages(counted) == messages(kept) == ["m.yaml:7: warning: same input as line 6; runs again as job"
                                                   f" '{kept.jobs[-1].id}'"]
    assert kept.jobs[-1].id.endswith("-2")


def test_a_streamed_manifest_over_max_jobs_is_counted_to_its_end_and_makes_none() -> None:
    rows = b"prompt,image_urls\n" + b"".join(f"p{n},https://x.test/{n}.png\n".encode() for n in range(12))
    batch = parse_manifest("m.csv", io.BytesIO(rows), ManifestOptions(max_jobs=8, default_endpoint=WAN25_I2I),
                           keep_jobs=False)  # fmt: skip
    assert messages(batch) == ["m.csv: it has 12 jobs, more than 8: raise --max-jobs to run them all, or split the"
                               " manifest"]
    assert batch.jobs == [] and batch.made.jobs == 0 and batch.records == 12


@pytest.mark.parametrize(("data", "message"), [
    (b"prompt,image_url\nok," + URL.encode() + b"\n\xff bad," + URL.encode() + b"\nlater," + URL.encode() + b"\n",
     "m.csv:3: not UTF-8 (byte 0xff at column 1); save the file as UTF-8"),
    (b'prompt,image_url\nok,' + URL.encode() + b'\n"never closed,x\nlater,' + URL.encode() + b"\n",
     "m.csv:3: malformed CSV: unexpected end of data (a quoted cell is never closed)"),
])  # fmt: skip
def test_a_manifest_not_read_to_its_end_is_incomplete(data: bytes, message: str) -> None:
    """Rows after the place reading stopped are neither jobs nor reported: such a batch may not run skipping them."""
    batch = parse_manifest("m.csv", data, ManifestOptions(default_endpoint=WAN22_I2I))
    assert messages(batch) == [message]
    assert not batch.complete and [job.input["prompt"] for job in batch.jobs] == ["ok"]


def test_a_long_yaml_jobs_list_is_warned_of(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("jobs.yaml_format.YAML_LIST_ADVISED", 2)
    text = f"endpoint: {WAN22_I2I}\njobs:\n" + "".join(f"  - {{prompt: p{n}, image_url: {URL}}}\n" for n in range(3))
    batch = parse_manifest("m.yaml", text.encode())
    assert messages(batch) == ["m.yaml:2: warning: jobs: a YAML list of 3 jobs is read whole, about 5 times slower"
                               " than CSV or JSONL, which stream; beyond 2 jobs write JSONL (one JSON object per"
                               " line) or a `matrix`"]
    assert len(batch.jobs) == 3


def test_a_matrix_variant_is_named_by_the_short_values_it_varies_in_and_keeps_its_id() -> None:
    text = f"""endpoint: {WAN25_I2I}
defaults: {{image_urls: [{URL}]}}
matrix: {{seed: [7, 42], image_size: [square_hd, landscape_16_9]}}
jobs:
  - {{id: storm, prompt: a storm}}
  - {{id: calm, prompt: a calm sea, image_size: square}}
  - {{prompt: no id}}
"""
    batch = parse("m.yaml", text)
    names = [(job.id.rsplit("-", 1)[0], job.file_stem, job.matrix) for job in batch.jobs]
    assert names[:6] == [
        ("storm", "storm@seed7-image_sizesquare_hd", {"seed": 7, "image_size": "square_hd"}),
        ("storm", "storm@seed7-image_sizelandscape_16_9", {"seed": 7, "image_size": "landscape_16_9"}),
        ("storm", "storm@seed42-image_sizesquare_hd", {"seed": 42, "image_size": "square_hd"}),
        ("storm", "storm@seed42-image_sizelandscape_16_9", {"seed": 42, "image_size": "landscape_16_9"}),
        ("calm", "calm@seed7", {"seed": 7}),
        ("calm", "calm@seed42", {"seed": 42}),
    ]
    for job in batch.jobs[:6]:  # ids are those of every earlier version: a rerun of an old batch submits nothing new
        assert job.id == variant_job_id(job.id.rsplit("-", 1)[0], job.fingerprint)
    unnamed = batch.jobs[6:]
    assert [job.file_stem for job in unnamed] == [job.id for job in unnamed] and len(unnamed) == 4
    assert all(job.name == "" for job in unnamed), "a row without an id is named by the hash of its input"


def test_variants_whose_values_cannot_name_a_file_are_named_by_their_ids() -> None:
    text = f"""endpoint: {WAN25_I2I}
defaults: {{image_urls: [{URL}]}}
matrix: {{prompt: [a storm at night, a calm sea], seed: [1]}}
jobs: [{{id: long}}]
"""
    batch = parse("m.yaml", text)
    assert [job.file_stem for job in batch.jobs] == [job.id for job in batch.jobs]
    assert [job.matrix for job in batch.jobs] == [{"prompt": "a storm at night", "seed": 1},
                                                  {"prompt": "a calm sea", "seed": 1}]  # fmt: skip


def test_two_jobs_never_share_a_file_name() -> None:
    """A repeated value repeats a job ("7" is 7 to the schema); a row's id never reads as another row's variant."""
    text = f"""endpoint: {WAN25_I2I}
defaults: {{image_urls: [{URL}]}}
matrix: {{seed: [7, "7", 7, 8]}}
jobs:
  - {{id: s, prompt: x}}
  - {{id: s-seed8, prompt: y, seed: 3}}
"""
    batch = parse("m.yaml", text)
    assert batch.errors == [] and len(batch.jobs) == 5
    stems = [job.file_stem for job in batch.jobs]
    assert len(set(stems)) == len(stems), stems
    assert stems[0] == "s@seed7" and stems[3] == "s@seed8" and stems[4] == "s-seed8"
    assert [(stem, job.id[-2:]) for stem, job in zip(stems[1:3], batch.jobs[1:3], strict=True)] == [
        (batch.jobs[1].id, "-2"), (batch.jobs[2].id, "-3")], "each repeat runs as <id>-<n>, named by its id"
