import threading
from collections import Counter

import pytest
import redis

from jobs.job import Job
from jobs.status import JobStatus
from runner.ledger.store import BatchInfo, Ledger

S = JobStatus


def make_job(n: int, prompt: str = "p") -> Job:
    return Job(f"j{n}", "fal-ai/echo", {"prompt": f"{prompt}{n}"}, f"fp-{prompt}{n}", "m.csv", n + 1, n)


def open_batch(ledger: Ledger, jobs: int, max_in_flight: int = 2, batch_id: str = "b") -> list[Job]:
    ledger.save_batch(BatchInfo(id=batch_id, manifest="m.csv", folder="/out/b", created_at=1.0,
                                max_in_flight=max_in_flight))  # fmt: skip
    made = [make_job(n) for n in range(jobs)]
    ledger.sync_jobs(batch_id, made, now=2.0)
    return made


def test_batch_round_trip(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    info = BatchInfo(id="b1", manifest="m.yaml", folder="/o/b1", created_at=5.0, max_in_flight=4, priority="low")
    ledger.save_batch(info)
    assert ledger.batch("b1") == info
    assert ledger.batch("nope") is None
    assert ledger.batch_ids() == ["b1"]


def test_sync_is_idempotent_and_counts_are_kept(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    jobs = open_batch(ledger, 3)
    assert ledger.sync_jobs("b", jobs, now=3.0) == Counter(kept=3)
    assert ledger.counts("b")[S.WAITING] == 3
    assert [r.job.id for r in ledger.records("b")] == ["j0", "j1", "j2"]
    assert ledger.batch("b").jobs == 3  # type: ignore[union-attr]
    record = ledger.record("b", "j1")
    assert record is not None and record.job == jobs[1] and record.status is S.WAITING and record.queued_at == 2.0


def test_admission_fills_the_window_and_a_release_admits_the_next(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, 5, max_in_flight=2)
    assert ledger.admit("b") == ["j0", "j1"]
    assert ledger.admit("b") == []
    assert ledger.in_flight("b") == 2
    assert ledger.move("b", "j0", [S.ADMITTED], S.SUBMITTING)
    assert ledger.move("b", "j0", [S.SUBMITTING], S.QUEUED, request_id="r-0", attempts=1)
    assert ledger.move("b", "j0", [S.QUEUED], S.SUCCEEDED, release=True)
    assert ledger.admit("b") == ["j2"]
    counts = ledger.counts("b")
    assert (counts[S.WAITING], counts[S.ADMITTED], counts[S.SUCCEEDED]) == (2, 2, 1)
    assert ledger.record("b", "j0").request_id == "r-0"  # type: ignore[union-attr]


def test_a_refused_move_changes_nothing(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, 1)
    assert not ledger.move("b", "j0", [S.ADMITTED], S.SUBMITTING, request_id="x")
    assert not ledger.move("b", "missing", [], S.FAILED)
    record = ledger.record("b", "j0")
    assert record is not None and record.status is S.WAITING and record.request_id is None
    assert ledger.counts("b")[S.SUBMITTING] == 0


def test_only_one_of_many_racing_workers_wins_a_move(redis_client: redis.Redis) -> None:
    """The guard that keeps a redelivered submit task from submitting twice."""
    ledger = Ledger(redis_client)
    open_batch(ledger, 1)
    ledger.admit("b")
    wins: list[bool] = []
    threads = [threading.Thread(target=lambda: wins.append(ledger.move("b", "j0", [S.ADMITTED], S.SUBMITTING)))
               for _ in range(20)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 19 + [True]


def test_window_holds_under_concurrent_admission(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, 200, max_in_flight=7)
    admitted: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(30):
            got = ledger.admit("b")
            with lock:
                admitted.extend(got)
            for job_id in got:
                assert ledger.in_flight("b") <= 7
                ledger.move("b", job_id, [S.ADMITTED], S.SUCCEEDED, release=True)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == len(set(admitted))
    assert ledger.counts("b")[S.SUCCEEDED] == len(admitted)
    assert ledger.counts("b")[S.WAITING] == 200 - len(admitted)


def test_a_cancelled_batch_admits_nothing(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, 3)
    ledger.set_batch_state("b", "cancelled")
    assert ledger.admit("b") == []


def test_a_changed_row_runs_again_unless_it_is_at_fal(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    jobs = open_batch(ledger, 2)
    ledger.admit("b")
    ledger.move("b", "j0", [], S.SUCCEEDED, release=True, outputs=[])
    ledger.move("b", "j1", [], S.QUEUED, request_id="r1")
    edited = [Job(j.id, j.endpoint, {"prompt": "new"}, "fp-new-" + j.id, j.file, j.line, j.row) for j in jobs]
    assert ledger.sync_jobs("b", edited, now=9.0) == Counter(changed=1, in_flight=1)
    again = ledger.record("b", "j0")
    assert again is not None and again.status is S.WAITING and again.job.input == {"prompt": "new"}
    assert ledger.admit("b") == ["j0"]


def test_run_times_keep_the_latest(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    for n in range(60):
        ledger.note_run_time("b", float(n))
    recent = ledger.recent_run_times("b")
    assert len(recent) == 50 and recent[0] == 59.0


def test_poll_tokens_supersede_older_chains(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, 1)
    first = ledger.next_poll_token("b", "j0")
    second = ledger.next_poll_token("b", "j0")
    assert second == first + 1 == ledger.poll_token("b", "j0")


@pytest.mark.parametrize("jobs", [2500])
def test_large_batches_sync_in_chunks(redis_client: redis.Redis, jobs: int) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, jobs)
    assert ledger.counts("b")[S.WAITING] == jobs
    assert [r.job.id for r in ledger.records("b")] == [f"j{n}" for n in range(jobs)]


def test_a_move_can_be_guarded_on_what_the_step_saw(redis_client: redis.Redis) -> None:
    """A late step of attempt 1 must not undo attempt 2."""
    ledger = Ledger(redis_client)
    open_batch(ledger, 1)
    ledger.admit("b")
    ledger.move("b", "j0", [], S.QUEUED, request_id="r-1")
    token = ledger.next_poll_token("b", "j0")
    assert ledger.move("b", "j0", [S.QUEUED], S.ADMITTED, expect={"request_id": "r-1"}, request_id=None)
    ledger.move("b", "j0", [], S.QUEUED, request_id="r-2")
    # the stale step still believes the job is attempt r-1 with the old poll token
    assert not ledger.move("b", "j0", [S.QUEUED], S.ADMITTED, expect={"request_id": "r-1"}, request_id=None)
    assert not ledger.move("b", "j0", [S.QUEUED], S.FAILED, expect={"poll_token": token - 1})
    assert ledger.move("b", "j0", [S.QUEUED], S.RUNNING, expect={"request_id": "r-2", "poll_token": token})
    record = ledger.record("b", "j0")
    assert record is not None and (record.status, record.request_id) == (S.RUNNING, "r-2")


def test_an_unset_field_is_expected_as_none(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, 1)
    assert ledger.move("b", "j0", [S.WAITING], S.WAITING, expect={"request_id": None, "error_type": None})
    assert not ledger.move("b", "j0", [S.WAITING], S.WAITING, expect={"request_id": "x"})
