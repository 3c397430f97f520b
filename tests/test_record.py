import pytest

from jobs.job import Job
from jobs.record import Attempt, JobRecord, OutputFile, Reconciled
from jobs.status import FINAL, IN_FLIGHT, JobStatus

JOB = Job("j1", "fal-ai/wan-25-preview/image-to-image", {"prompt": "p", "image_urls": ["a.png"]}, "f" * 64, "m.csv", 2, 1)
OUT = OutputFile(0, "images/j1_0.png", "http://x/0.png", "image/png", 512, 512, 1234, seed=7)


def test_round_trip_through_a_dict() -> None:
    record = JobRecord(JOB, JobStatus.SUCCEEDED, attempts=2, request_id="r", outputs=(OUT,),
                       history=(Attempt(1, None, "submit_lost", "never reached fal", 1.0, 2.0),),
                       sent_at=3.0, sent_digest="ab" * 16,
                       reconciled=(Reconciled(1, "absent", None, 1.0, 2.0), Reconciled(2, "adopted", "r", 3.0, 9.0)))  # fmt: skip
    assert JobRecord.from_dict(record.to_dict()) == record


@pytest.mark.parametrize(
    ("values", "queue_wait_s", "run_s", "latency_s"),
    [
        ({}, None, None, None),
        ({"submitted_at": 10.0, "started_at": 12.0, "completed_at": 15.0, "finished_at": 15.5}, 2.0, 3.0, 5.5),
        ({"submitted_at": 10.0, "started_at": 14.0, "completed_at": 15.0, "inference_s": 2.5, "finished_at": 16.0},
         2.5, 2.5, 6.0),
        ({"submitted_at": 10.0, "finished_at": 11.0, "history": (Attempt(1, "r0", "x", "y", 4.0, 6.0),)},
         None, None, 7.0),
    ],
)  # fmt: skip
def test_timings(values: dict[str, object], queue_wait_s: float | None, run_s: float | None, latency_s: float | None) -> None:
    record = JobRecord(JOB, **values)  # type: ignore[arg-type]
    assert (record.queue_wait_s, record.run_s, record.latency_s) == (queue_wait_s, run_s, latency_s)


def test_status_groups() -> None:
    assert {s for s in JobStatus if s.is_final} == FINAL
    assert IN_FLIGHT.isdisjoint(FINAL) and JobStatus.WAITING not in IN_FLIGHT
    assert [s for s in JobStatus if s.has_request] == [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.COLLECTING]
