"""`wan-batch validate` on what crashed it, what flooded it and what it let through (issue 12).

Every manifest gives located errors or a batch, never a traceback; exit 1 means
"the manifest has errors" and nothing else; alike errors print once, with their lines.
"""

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.batch import Batch
from jobs.diagnostics import Diagnostic, Severity, group_diagnostics, grouped_lines
from jobs.endpoints import WAN22_I2I, WAN25_I2I
from jobs.manifest import ManifestOptions
from runner.batches.manifests import load_manifest
from runner.cli import main
from runner.settings import InputSettings

URL = "https://x.test/a.png"
TYPO = "fal-ai/wan-26-preview/image-to-image"
DEEP = "[" * 1000 + "]" * 1000


def validate(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["validate", *args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


# --- what crashed ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("rows.csv", f"prompt,image_url,foo.bar\nx,{URL},1\n", f"rows.csv:2: foo.bar: unknown field for {WAN22_I2I}"),
        ("rows.jsonl", json.dumps({"prompt": "x", "image_url": URL, "image_size.width": 9}), "rows.jsonl:1: image_size.width: unknown field"),
        ("rows.csv", "prompt,image_url\nx,a\x00b.png\n", "rows.csv:2: image_url: image reference holds a control character '\\x00'"),
        ("rows.jsonl", '{"prompt": "x", "image_url": "a\\u0000b.png"}', "rows.jsonl:1: image_url: image reference holds a control character"),
        ("rows.jsonl", '{"prompt": "x", "image_url": "' + URL + '", "loras": ' + DEEP + "}", "rows.jsonl:1: loras: nested deeper than 100 levels"),
        ("rows.csv", f'prompt,image_url,loras:json\nx,{URL},"{DEEP}"\n', "rows.csv:2: loras: nested deeper than 100 levels"),
        ("rows.yaml", f"jobs:\n- prompt: x\n  image_url: {URL}\n  loras: " + "[" * 990 + "]" * 990 + "\n", "rows.yaml:4: loras: nested deeper than 100 levels"),
        ("rows.yaml", f"jobs:\n- prompt: x\n  image_url: {URL}\n  loras: {DEEP}\n", "rows.yaml:4: YAML syntax error: exceeded maximum nesting depth"),
        ("rows.jsonl", '{"prompt": "x", "image_url": "' + URL + '", "seed": ' + "9" * 5000 + "}", "rows.jsonl:1: seed: a number of 5,000 digits is too large"),
        ("rows.yaml", f"jobs:\n- prompt: x\n  image_url: {URL}\n  seed: " + "9" * 5000 + "\n", "rows.yaml:4: seed: a number of 5,000 digits is too large"),
        ("rows.jsonl", '{"prompt": "x", "image_url": "' + URL + '", "strength": 1e400}', "rows.jsonl:1: strength: not a finite number (inf)"),
        ("rows.csv", f"prompt,image_url,seed\nx,{URL},{'9' * 5000}\n", "rows.csv:2: seed: Unable to parse input string as an integer"),
    ],
)  # fmt: skip
def test_what_crashed_validate_is_a_located_error(tmp_path: Path, name: str, text: str, expected: str) -> None:
    manifest = tmp_path / name
    manifest.write_text(text)
    code, stdout, stderr = validate(str(manifest), "--endpoint", WAN22_I2I)
    assert code == 1
    assert f"{tmp_path}/{expected}" in stderr, stderr
    assert "nothing would be submitted" in stdout


def test_an_internal_error_is_one_line_and_exit_3_not_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No manifest is left that crashes the loader, so a bug is stood in for (the only patch in this file)."""

    def crash(*_args: object, **_options: object) -> Batch:
        raise RecursionError("maximum recursion depth exceeded\nwhile doing something")

    monkeypatch.setattr("runner.cli.batch.load_manifest", crash)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"prompt,image_url\nx,{URL}\n")
    code, stdout, stderr = validate(str(manifest), "--endpoint", WAN22_I2I)
    assert code == 3
    assert stderr.splitlines() == [
        "internal error: RecursionError: maximum recursion depth exceeded; please report it, with the manifest"
    ]
    assert stdout == ""


# --- a quick fuzz --------------------------------------------------------------

SEEDS = {
    "m.csv": f"id,prompt,image_url,strength,seed\nj1,a cat,{URL},0.5,7\nj2,a dog,img.png,0.3,\n",
    "w.csv": f'prompt,image_urls,image_size,endpoint\na,{URL}|img.png,"{{""width"": 800, ""height"": 600}}",{WAN25_I2I}\n',
    "p.tsv": "prompt\tsteps:json\tloras:json\tendpoint\nx\t28\t[{\"path\": \"a\"}]\tfal-ai/flux/dev\n",
    "m.jsonl": json.dumps({"prompt": "x", "image_urls": [URL, "img.png"], "seed": 3, "endpoint": WAN25_I2I})
    + "\n" + json.dumps({"prompt": "y", "loras": [{"path": "a", "scale": 0.5}], "endpoint": "fal-ai/flux/dev"}),
    "m.yaml": f"endpoint: {WAN25_I2I}\ndefaults: {{num_images: 2}}\nmatrix:\n  seed: [1, 2]\n"
    f"jobs:\n  - {{id: a, prompt: cat, image_urls: [{URL}, img.png]}}\n  - prompt: dog\n    image_urls: img.png\n",
}  # fmt: skip
SNIPPETS = [
    "\x00", "\x01", "\x1b", "\x7f", "\r", "\t", "\n", '"', "'", ",", ":", "- ", "{", "}", "[", "]", "|", "&a ", "*a",
    "[" * 1000, "{\"a\": " * 1000, "]" * 50, "9" * 5000, "-1e400", "1e400", "NaN", "\\ud800", "\ufeff", "\u2028",
    "foo.bar", "a[0]", "image_size.width", "Prompt", "pass_through", "endpoint", TYPO, "../../etc/passwd", "\\u0000",
]  # fmt: skip


def mutate(data: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) + 1)
        how = rng.randrange(5)
        if how == 0:
            data = data[:at] + rng.choice(SNIPPETS) + data[at:]
        elif how == 1:
            data = data[:at] + data[at + rng.randint(1, 20) :]
        elif how == 2:
            lines = data.split("\n")
            line = rng.randrange(len(lines))
            lines.insert(line, lines[line])
            data = "\n".join(lines)
        elif how == 3:
            data = data[:at] + chr(rng.choice([0, 9, 10, 34, 44, 58, 91, 123, rng.randrange(0x10000)])) + data[at + 1 :]
        else:
            data = data[:at]
    return data


def assert_located(batch: Batch, name: str, text: str) -> None:
    total_lines = len(text.splitlines()) + 1
    for diagnostic in batch.diagnostics:
        assert diagnostic.file == name
        assert diagnostic.line is None or 1 <= diagnostic.line <= total_lines, diagnostic
    json.dumps([d.to_dict() for d in batch.diagnostics])
    "\n".join(grouped_lines(batch.diagnostics)).encode("utf-8")  # prints on any UTF-8 terminal


def test_mutated_manifests_never_raise(tmp_path: Path, make_image) -> None:  # type: ignore[no-untyped-def]
    """A thousand mutated manifests (the same ones every run): each a batch or located errors."""
    make_image("img.png")
    settings = InputSettings(max_image_bytes=1_000_000)
    rng = random.Random(12)
    for _ in range(1000):
        name = rng.choice(list(SEEDS))
        text = mutate(SEEDS[name], rng)
        endpoint = rng.choice([None, WAN22_I2I, WAN25_I2I, TYPO, "fal-ai/other"])
        options = ManifestOptions(default_endpoint=endpoint, allowed_endpoints=frozenset(rng.choice([(), (TYPO,)])))
        path = tmp_path / name
        try:
            batch = load_manifest(path, options, settings, text.encode("utf-8", "surrogatepass"))
        except Exception as exc:  # pragma: no cover - the message is the reproduction
            pytest.fail(f"{type(exc).__name__}: {exc} on {name} {text[:300]!r} (endpoint {endpoint})")
        assert_located(batch, str(path), text)


# --- floods, grouped -------------------------------------------------------------


def diagnostic(line: int | None, field: str | None = "seed", message: str = "bad", warn: bool = False) -> Diagnostic:
    return Diagnostic("rows.csv", line, field, message, Severity.WARNING if warn else Severity.ERROR)


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        ([], []),
        ([diagnostic(3)], ["rows.csv:3: seed: bad"]),
        ([diagnostic(3), diagnostic(5)], ["rows.csv: seed: bad (on 2 lines: 3, 5)"]),
        ([diagnostic(3), diagnostic(5), diagnostic(7)], ["rows.csv: seed: bad (on 3 lines: 3, 5, 7)"]),
        ([diagnostic(n) for n in range(3, 2003, 2)], ["rows.csv: seed: bad (on 1,000 lines: 3, 5, 7, ... (997 more))"]),
        ([diagnostic(2), diagnostic(2, "id"), diagnostic(3)], ["rows.csv: seed: bad (on 2 lines: 2, 3)", "rows.csv:2: id: bad"]),
        ([diagnostic(2), diagnostic(3, message="worse")], ["rows.csv:2: seed: bad", "rows.csv:3: seed: worse"]),
        ([diagnostic(2), diagnostic(3, warn=True)], ["rows.csv:2: seed: bad", "rows.csv:3: warning: seed: bad"]),
        ([diagnostic(2, warn=True), diagnostic(3, warn=True)], ["rows.csv: warning: seed: bad (on 2 lines: 2, 3)"]),
        ([diagnostic(None, None)], ["rows.csv: bad"]),
    ],
)  # fmt: skip
def test_diagnostics_alike_but_for_their_line_are_grouped(found: list[Diagnostic], expected: list[str]) -> None:
    assert [str(group) for group in group_diagnostics(found)] == expected
    assert sum(len(group.lines) for group in group_diagnostics(found)) == len(found)


@pytest.mark.parametrize(
    ("max_groups", "shown", "tail"),
    [
        (0, 4, None),
        (4, 4, None),
        (9, 4, None),
        (3, 3, "... 1 more problem(s) not shown (1 in all)"),
        (1, 1, "... 3 more problem(s) not shown (3 in all)"),
    ],
)
def test_grouped_lines_say_how_many_were_not_shown(max_groups: int, shown: int, tail: str | None) -> None:
    found = [diagnostic(n) for n in range(1, 12)] + [diagnostic(1, f"f{i}") for i in range(3)]
    lines = grouped_lines(found, max_groups)
    assert len(lines) == shown + (tail is not None)
    if tail is not None:
        assert lines[-1].startswith(tail)
        assert "--max-errors 0" in lines[-1]


def flood(tmp_path: Path, rows: int = 1000) -> Path:
    manifest = tmp_path / "rows.csv"
    body = "".join(f"p{n},{URL},{n}\n" for n in range(rows))
    manifest.write_text("prompt,image_url,sead\n" + body + f",{URL},1\n")
    return manifest


def test_a_flood_of_one_error_prints_one_line(tmp_path: Path) -> None:
    manifest = flood(tmp_path)
    code, stdout, stderr = validate(str(manifest), "--endpoint", WAN22_I2I)
    assert code == 1
    assert stderr.splitlines() == [
        f"{manifest}: sead: unknown field for {WAN22_I2I}; did you mean 'seed'? (on 1,001 lines: 2, 3, 4, ... (998 more))",
        f"{manifest}:1002: prompt: required field is missing",
    ]
    assert f"{manifest}: 1002 error(s), 0 warning(s); nothing would be submitted" in stdout


def test_max_errors_bounds_the_groups_printed(tmp_path: Path) -> None:
    manifest = flood(tmp_path)
    code, _, stderr = validate(str(manifest), "--endpoint", WAN22_I2I, "--max-errors", "1")
    assert code == 1
    lines = stderr.splitlines()
    assert len(lines) == 2 and "(on 1,001 lines:" in lines[0]
    assert lines[1].startswith("... 1 more problem(s) not shown (1 in all)")


def test_json_keeps_every_error_and_adds_the_groups(tmp_path: Path) -> None:
    manifest = flood(tmp_path)
    code, stdout, _ = validate(str(manifest), "--endpoint", WAN22_I2I, "--json", "--max-errors", "1")
    report = json.loads(stdout)
    assert code == 1
    assert len(report["errors"]) == 1002
    assert [(g["field"], g["count"]) for g in report["groups"]] == [("sead", 1001), ("prompt", 1)]
    assert report["groups"][0]["lines"][:3] == [2, 3, 4]


def test_run_refuses_a_flood_grouped(tmp_path: Path) -> None:
    manifest = flood(tmp_path, rows=300)
    args = ["run", str(manifest), "--endpoint", WAN22_I2I, "--sim", "--out", str(tmp_path / "out"), "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert lines[0].endswith("(on 301 lines: 2, 3, 4, ... (298 more))")
    assert len(lines) == 3 and f"{manifest}: not run" in lines[2]


# --- a mistyped endpoint ------------------------------------------------------------


def test_a_mistyped_endpoint_is_an_error_unless_allowed(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps({"prompt": p, "image_urls": [URL]}) for p in "abc"))
    code, _, stderr = validate(str(manifest), "--endpoint", TYPO)
    assert code == 1
    assert stderr.startswith(f"{manifest}: endpoint: unknown endpoint '{TYPO}'; did you mean '{WAN25_I2I}'?")
    assert len(stderr.splitlines()) == 1, "one error for the whole file, not one per row"
    code, stdout, _ = validate(str(manifest), "--endpoint", TYPO, "--allow-endpoint", TYPO, "--allow-endpoint", "x/y")
    assert code == 0
    assert f"{TYPO}: 3  (pass-through: inputs sent as given)" in stdout


def test_an_endpoint_far_from_every_known_one_still_passes_through(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("prompt\nx\n")
    code, stdout, _ = validate(str(manifest), "--endpoint", "fal-ai/wan-25-preview/image-to-video")
    assert code == 0
    assert "(pass-through: inputs sent as given)" in stdout


def test_a_problem_of_the_whole_file_is_not_grouped_with_located_ones() -> None:
    groups = group_diagnostics([diagnostic(None), diagnostic(3), diagnostic(4)])
    assert [str(group) for group in groups] == ["rows.csv: seed: bad", "rows.csv: seed: bad (on 2 lines: 3, 4)"]
