"""Malformed manifests give located errors, never exceptions."""

import pytest

from jobs.formats import read_manifest
from jobs.values import value_problem


def problems(name: str, text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [str(d) for d in read_manifest(name, data).diagnostics]


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("m.csv", b"", "m.csv: empty manifest: no jobs"),
        ("m.jsonl", b"\n  \n", "m.jsonl: empty manifest: no jobs"),
        ("m.yaml", b"# only a comment\n", "m.yaml: empty manifest: no jobs"),
        ("m.yaml", b"endpoint: a/b\n", "m.yaml:1: jobs: no jobs: give a `jobs` list, a `matrix`, or both"),
        ("m.csv", b"prompt,image_url\n", "m.csv:1: no rows under the header"),
        ("m.txt", b"prompt\nx\n", "m.txt: unknown manifest format; use one of .csv, .tsv, .jsonl"),
        ("m.csv", b"prompt\nok\n\xff\xfe bad\n", "m.csv:3: not UTF-8 (byte 0xff at column 1); save the file as UTF-8"),
        ("m.csv", b'prompt,image_url\n"a cat,x.png\n', "m.csv:2: malformed CSV: unexpected end of data (a quoted cell is never closed)"),
        ("m.csv", b'prompt,image_url\n"a" cat,x.png\n', "m.csv:2: malformed CSV: ',' expected after '\"'"),
        ("m.csv", b"prompt,image_url\na,b,c\n", "m.csv:2: row has 3 fields, the header has 2"),
        ("m.csv", b"prompt,prompt\na,b\n", "m.csv:1: prompt: column appears twice in the header"),
        ("m.csv", b"prompt,,x\na,b,c\n", "m.csv:1: header column 2 has no name"),
        ("m.csv", b"prompt,size:json\na,{bad\n", "m.csv:2: size: invalid JSON in a :json column"),
        ("m.jsonl", b'{"prompt": "a"}\n{"prompt": "b",}\n', "m.jsonl:2: invalid JSON: Expecting property name"),
        ("m.jsonl", b'{"prompt": "a"}\n[1, 2]\n', "m.jsonl:2: expected a JSON object, got list"),
        ("m.jsonl", b'{"prompt": "a", "prompt": "b"}\n', "m.jsonl:1: prompt: key appears twice"),
        ("m.yaml", b"jobs:\n  - prompt: [unclosed\n", "m.yaml:3: YAML syntax error"),
        ("m.yaml", b"endpoint: a/b\njobs:\n- prompt: x\n  prompt: y\n", "m.yaml:4: prompt: key appears twice in this mapping (first at line 3)"),
        ("m.yaml", b"endpoint: a/b\ndefault:\n  seed: 1\njobs: []\n", "m.yaml:2: default: unknown top-level key; did you mean 'defaults'?"),
        ("m.yaml", b"endpoint: a/b\njobs: {prompt: x}\n", "m.yaml:2: jobs: must be a list of jobs"),
        ("m.yaml", b"endpoint: a/b\njobs:\n  - just text\n", "m.yaml:2: jobs[0]: each job must be a mapping"),
        ("m.yaml", b"endpoint: a/b\nmatrix:\n  seed: 3\n", "m.yaml:3: matrix.seed: must be a non-empty list of values"),
        ("m.yaml", b"endpoint: [a]\njobs: [{prompt: x}]\n", "m.yaml:1: endpoint: must be a string"),
        ("m.yaml", b"endpoint: a/b\ndefaults:\n  id: x\njobs: [{prompt: x}]\n", "m.yaml:3: defaults.id: `id` belongs to a job"),
        ("m.yaml", b"--- {jobs: []}\n--- {jobs: []}\n", "m.yaml:2: YAML syntax error: but found another document"),
        ("m.yaml", b"just a string\n", "m.yaml:1: expected a mapping with `endpoint`"),
    ],
)  # fmt: skip
def test_malformed_file_gives_a_located_error(name: str, data: bytes, expected: str) -> None:
    found = problems(name, data)
    assert any(p.startswith(expected) for p in found), found


def test_csv_record_lines_follow_multiline_cells() -> None:
    manifest = read_manifest("m.csv", b'prompt,x\n"two\nlines",1\n\nthree,2\n')
    assert manifest.diagnostics == []
    assert [(r.row, r.layer.line) for r in manifest.records] == [(1, 2), (2, 5)]
    assert manifest.records[0].layer.values == {"prompt": "two\nlines", "x": "1"}


def test_csv_empty_cells_leave_fields_unset_and_cells_stay_text() -> None:
    manifest = read_manifest("m.tsv", b"prompt\tseed\tsize:json\na cat\t\t{\"width\": 512}\n")
    layer = manifest.records[0].layer
    assert layer.values == {"prompt": "a cat", "size": {"width": 512}}
    assert layer.text_keys == frozenset({"prompt"})


def test_csv_allows_a_byte_order_mark_and_large_cells() -> None:
    big = "data:image/png;base64," + "A" * 300_000
    manifest = read_manifest("m.csv", ("\ufeffprompt,image_url\nx,\"" + big + "\"\n").encode())
    assert manifest.diagnostics == []
    assert manifest.records[0].layer.values["image_url"] == big


def test_yaml_keeps_lines_of_each_key() -> None:
    text = b"endpoint: a/b\ndefaults:\n  seed: 1\nmatrix:\n  prompt: [x, y]\njobs:\n  - id: one\n    image_url: a.png\n"
    manifest = read_manifest("m.yaml", text)
    assert manifest.diagnostics == []
    assert (manifest.endpoint, manifest.endpoint_line) == ("a/b", 1)
    assert manifest.defaults.key_lines == {"seed": 3}
    assert manifest.matrix.key_lines == {"prompt": 5}
    assert manifest.records[0].layer.key_lines == {"id": 7, "image_url": 8}


def test_jsonl_keeps_unicode_line_separators_inside_strings() -> None:
    manifest = read_manifest("m.jsonl", '{"prompt": "a\u2028b"}\n'.encode())
    assert manifest.diagnostics == []
    assert manifest.records[0].layer.values == {"prompt": "a\u2028b"}


DEEP = "[" * 1000 + "]" * 1000
HUGE_INT = "9" * 5000


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("m.jsonl", '{"prompt": "x", "loras": ' + DEEP + "}", "m.jsonl:1: loras: nested deeper than 100 levels"),
        ("m.jsonl", '{"prompt": "x", "loras": ' + "[" * 101 + "]" * 101 + "}", "m.jsonl:1: loras: nested deeper than 100 levels"),
        ("m.jsonl", '{"prompt": "x", "ok": ' + "[" * 100 + "]" * 100 + ', "deep": {"a": ' + DEEP + "}}", "m.jsonl:1: deep: nested deeper than 100 levels"),
        ("m.jsonl", DEEP, "m.jsonl:1: nested deeper than 100 levels"),
        ("m.csv", 'prompt,loras:json\nx,"' + DEEP + '"\n', "m.csv:2: loras: nested deeper than 100 levels"),
        ("m.yaml", "jobs:\n- prompt: x\n  loras: " + "[" * 900 + "]" * 900 + "\n", "m.yaml:3: loras: nested deeper than 100 levels"),
        ("m.yaml", "defaults:\n  loras: " + "[" * 900 + "]" * 900 + "\njobs: [{prompt: x}]\n", "m.yaml:2: defaults.loras: nested deeper than 100 levels"),
        ("m.yaml", "jobs:\n- {prompt: x, loras: " + "[" * 1200 + "]" * 1200 + "}\n", "m.yaml:2: YAML syntax error: exceeded maximum nesting depth"),
        ("m.yaml", "jobs:\n- {prompt: x, loop: &a [*a]}\n", "m.yaml:2: loop: holds itself"),
        ("m.yaml", "defaults:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(f"  a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]\n" for n in range(1, 7)) + "jobs: [{prompt: x, z: *a6}]\n",
         "m.yaml:8: defaults.a6: holds more than 1,000,000 values (a YAML alias counts each time it is used)"),
        ("m.jsonl", '{"prompt": "x", "seed": ' + HUGE_INT + "}", "m.jsonl:1: seed: a number of 5,000 digits is too large"),
        ("m.jsonl", '{"prompt": "x", "seed": -' + HUGE_INT + "}", "m.jsonl:1: seed: a number of 5,000 digits is too large"),
        ("m.jsonl", '{"prompt": "x", "strength": 1e400}', "m.jsonl:1: strength: not a finite number (inf)"),
        ("m.jsonl", '{"prompt": "x", "strength": NaN}', "m.jsonl:1: strength: not a finite number (nan)"),
        ("m.yaml", "jobs:\n- prompt: x\n  seed: " + HUGE_INT + "\n", "m.yaml:3: seed: a number of 5,000 digits is too large"),
        ("m.yaml", "matrix:\n  seed: [1, " + HUGE_INT + "]\n", "m.yaml:2: matrix.seed: a number of 5,000 digits is too large"),
        ("m.yaml", "jobs:\n- prompt: x\n  strength: 1.0e+400\n", "m.yaml:3: strength: not a finite number (inf)"),
        ("m.csv", 'prompt,size:json\nx,"{""w"": ' + HUGE_INT + '}"\n', "m.csv:2: size: a number of 5,000 digits is too large"),
        ("m.jsonl", '{"prompt": "a\\ud800"}', "m.jsonl:1: prompt: not valid Unicode text (a lone surrogate '\\ud800')"),
        ("m.jsonl", '{"a\\udfff": 1}', "m.jsonl:1: a\\udfff: not valid Unicode text"),
    ],
)  # fmt: skip
def test_values_that_can_never_be_sent_are_located(name: str, text: str, expected: str) -> None:
    """Each raised RecursionError or ValueError (int too long to convert) before; never a job now."""
    manifest = read_manifest(name, text.encode())
    found = [str(d) for d in manifest.diagnostics]
    assert any(p.startswith(expected) for p in found), found
    kept = [r.layer for r in manifest.records if not r.broken]
    if not manifest.shared_values_bad:  # a bad default or matrix value makes no job at all
        kept += [manifest.defaults, manifest.matrix]
    assert all(value_problem(value) is None for layer in kept for value in layer.values.values())


def test_a_bad_default_makes_no_job_at_all_even_with_skip_invalid() -> None:
    """It shapes every job: running them without it would pay for jobs the user did not ask for."""
    from jobs.manifest import parse_manifest

    text = "defaults: {num_inference_steps: " + "9" * 2000 + "}\njobs: [{prompt: a}, {prompt: b}]\n"
    assert read_manifest("m.yaml", text.encode()).shared_values_bad
    assert parse_manifest("m.yaml", text.encode()).jobs == []


def test_a_bad_json_cell_keeps_its_row_from_running() -> None:
    """Not a job without that field, even with --skip-invalid."""
    manifest = read_manifest("m.csv", b"prompt,size:json\na,{bad\nb,{}\n")
    assert [record.broken for record in manifest.records] == [True, False]


def test_yaml_pass_through_is_a_boolean_top_level_key() -> None:
    assert read_manifest("m.yaml", b"pass_through: true\njobs: [{prompt: x}]\n").pass_through is True
    found = problems("m.yaml", b"pass_through: maybe\njobs: [{prompt: x}]\n")
    assert found == ["m.yaml:1: pass_through: must be true or false"]
    assert problems("m.yaml", b"pass-through: true\njobs: [{prompt: x}]\n") == [
        "m.yaml:1: pass-through: unknown top-level key; did you mean 'pass_through'?"
    ]


def test_a_csv_whose_lines_end_in_a_lone_cr_reads_as_any_other() -> None:
    manifest = read_manifest("m.csv", b"prompt,x\ra,1\r\"two\rlines\",2\r")
    assert [(r.row, r.layer.line, r.layer.values) for r in manifest.records] == [
        (1, 2, {"prompt": "a", "x": "1"}), (2, 3, {"prompt": "two\rlines", "x": "2"})]
    assert manifest.diagnostics == []
