from jobs.job import Job
from jobs.record import JobRecord, OutputFile, Reconciled
from jobs.report import COLUMNS, report_rows, summarize
from jobs.status import JobStatus

DATA_URI = "data:image/png;base64," + "A" * 1000


def job(n: int, **meta: str) -> Job:
    return Job(f"j{n}", "fal-ai/wan-25-preview/image-to-image",
               {"prompt": f"p{n}", "image_urls": ["https://x/a.png", DATA_URI]}, "f", "m.csv", n + 1, n, meta=meta)  # fmt: skip


def output(n: int, seed: int) -> OutputFile:
    return OutputFile(n, f"images/j_{n}.png", f"http://x/{n}", "image/png", 512, 384, 10, seed)


RECORDS = [
    JobRecord(job(1, _source="s1"), JobStatus.SUCCEEDED, attempts=1, request_id="r1", outputs=(output(0, 5), output(1, 6)),
              submitted_at=0.0, completed_at=2.0, inference_s=1.5, finished_at=2.5),
    JobRecord(job(2), JobStatus.FAILED, attempts=3, request_id="r2", error_type="runner_server_error", error_message="boom"),
    JobRecord(job(3), JobStatus.SUCCEEDED, attempts=2, outputs=(output(0, 9),), submitted_at=0.0, finished_at=4.5,
              request_id="r3", reconciled=(Reconciled(1, "absent", None, 0.0, 1.0), Reconciled(2, "adopted", "r3", 1.0, 2.0))),
]  # fmt: skip


def test_one_row_per_image_and_one_per_job_without_images() -> None:
    rows = report_rows(RECORDS)
    assert [(r["job_id"], r["seed"], r["output_path"]) for r in rows] == [
        ("j1", 5, "images/j_0.png"), ("j1", 6, "images/j_1.png"), ("j2", None, None), ("j3", 9, "images/j_0.png"),
    ]  # fmt: skip
    first = rows[0]
    assert list(first)[: len(COLUMNS)] == list(COLUMNS)
    assert first["input_images"] == "https://x/a.png|data:image/png;base64,..."
    assert (first["width"], first["height"], first["queue_wait_s"], first["run_s"]) == (512, 384, 0.5, 1.5)
    assert first["_source"] == "s1"
    assert rows[2]["error_type"] == "runner_server_error" and rows[2]["status"] == "failed"
    assert rows[3]["reconciled"] == "attempt 1: absent; attempt 2: adopted r3" and first["reconciled"] is None


def test_summary() -> None:
    summary = summarize(RECORDS, wall_s=10.0)
    assert summary["counts"]["succeeded"] == 2 and summary["counts"]["failed"] == 1
    assert summary["counts"]["waiting"] == 0
    assert summary["images_written"] == 3
    assert summary["attempts"] == 6
    assert summary["failures_by_error_type"] == {"runner_server_error": 1}
    assert summary["reconciled"] == {"absent": 1, "adopted": 1}
    assert summary["latency_s"] == {"p50": 3.5, "p95": 4.4, "max": 4.5}
    assert summary["wall_s"] == 10.0


def test_summary_of_nothing() -> None:
    assert summarize([], None)["latency_s"] == {"p50": None, "p95": None, "max": None}



def test_matrix_values_and_local_input_sizes_are_columns_and_data_uris_stay_short() -> None:
    varied = Job("v1", "fal-ai/wan-25-preview/image-to-image", {"prompt": "p", "image_urls": ["in/a.png", DATA_URI]},
                 "f", "m.yaml", 3, 1, matrix={"seed": 7, "image_urls": ["in/a.png", DATA_URI],
                                              "image_size": {"width": 64, "height": 48}}, name="v@seed7")  # fmt: skip
    row = report_rows([JobRecord(varied, JobStatus.FAILED)], {"in/a.png": "64x48"})[0]
    assert row["name"] == "v@seed7" and row["input_sizes"] == "64x48|?"
    assert row["matrix.seed"] == 7 and row["matrix.image_size"] == '{"width": 64, "height": 48}'
    assert row["matrix.image_urls"] == '["in/a.png", "data:image/png;base64,..."]'
    assert report_rows([JobRecord(job(9), JobStatus.FAILED)])[0]["input_sizes"] is None, "no local input: no sizes"
