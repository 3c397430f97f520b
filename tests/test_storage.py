import json
from pathlib import Path

from jobs.job import Job
from jobs.record import JobRecord, OutputFile
from jobs.status import JobStatus
from runner.steps.folder import BatchFolder, write_atomically


def test_write_atomically_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.json"
    write_atomically(target, b"one")
    write_atomically(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_sidecar_and_reports(tmp_path: Path) -> None:
    folder = BatchFolder(tmp_path)
    job = Job("j1", "fal-ai/x/y", {"prompt": "p"}, "f", "m.csv", 2, 1, meta={"_src": "a"})
    record = JobRecord(job, JobStatus.SUCCEEDED, attempts=1, request_id="r1",
                       outputs=(OutputFile(0, "images/j1_0.png", "u", "image/png", 4, 3, 10, 9),))  # fmt: skip
    sidecar = json.loads(folder.write_sidecar(record).read_text())
    assert (sidecar["job_id"], sidecar["endpoint"], sidecar["input"]) == ("j1", "fal-ai/x/y", {"prompt": "p"})
    assert (sidecar["request_id"], sidecar["seeds"], sidecar["attempts"], sidecar["status"]) == ("r1", [9], 1, "succeeded")
    csv_path, json_path, summary = folder.write_reports([record], {"wall_s": 1.5})
    assert csv_path.read_text().splitlines()[0].endswith(",_src")
    assert json.loads(json_path.read_text())["summary"] == summary
    assert summary["images_written"] == 1


def test_leftovers_of_a_killed_run_are_removed_for_that_job_only(tmp_path: Path) -> None:
    folder = BatchFolder(tmp_path)
    folder.prepare()
    mine = [folder.images / ".job1_0.png.a1b2c3.part", folder.sidecars / ".job1.json.0f0f.tmp"]
    others = [folder.images / ".job1_2_0.png.a1b2c3.part", folder.images / "job1_0.png", folder.sidecars / "job1.json"]
    for path in mine + others:
        path.write_bytes(b"x")
    folder.remove_leftovers("job1")
    assert [p.exists() for p in mine] == [False, False]
    assert [p.exists() for p in others] == [True, True, True]
