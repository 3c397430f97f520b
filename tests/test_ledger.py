"""The ledger on a real Redis: moves applied atomically with their counters, indexes, window, timers and ends."""

import threading
from collections import Counter
from dataclasses import replace

import pytest
import redis

from jobs.job import Job
from jobs.lifecycle import JobUpdate, Move, plan
from jobs.record import JobRecord
from jobs.status import JobStatus
from runner.ledger.batch_info import BatchInfo
from runner.ledger.store import Ledger, OverBudget
from runner.ledger.timers import Timer, Timers, worker_mark

S = JobStatus


def make_job(n: int, prompt: str = "p") -> Job:
    return Job(f"j{n}", "fal-ai/echo", {"prompt": f"{prompt}{n}"}, f"fp-{prompt}{n}", "m.csv", n + 1, n)


def open_batch(ledger: Ledger, jobs: int, max_in_flight: int = 2, batch_id: str = "b", **info: object) -> list[Job]:
    ledger.save_batch(BatchInfo(id=batch_id, manifest="m.csv", folder="/out/b", created_at=1.0,
                                max_in_flight=max_in_flight, **info))  # type: ignore[arg-type]  # fmt: skip
    made = [make_job(n) for n in range(jobs)]
    ledger.sync_jobs(batch_id, made, now=2.0)
    return made


def move(ledger: Ledger, job_id: str, what: Move, due_at: float | None = None, **values: object) -> JobRecord | None:
    record = ledger.record("b", job_id)
    assert record is not None
    applied = ledger.apply("b", plan(record, what, JobUpdate(**values), now=10.0), due_at)  # type: ignore[arg-type]
    return None if applied is None else applied.record


def index(ledger: Ledger, status: JobStatus) -> list[str]:
    return ledger.job_ids("b", [status])


def test_batch_round_trip(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    info = BatchInfo(id="b1", manifest="m.yaml", folder="/o/b1", created_at=5.0, max_in_flight=4, priority="low")
    ledger.save_batch(info)
    assert ledger.batch("b1") == info
    assert ledger.batch("nope") is None
    assert ledger.batch_ids() == ["b1"]


def test_sync_is_idempotent_and_counts_and_indexes_are_kept(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    jobs = open_batch(ledger, 3)
    assert ledger.sync_jobs("b", jobs, now=3.0) == Counter(kept=3)
    assert ledger.counts("b")[S.WAITING] == 3 and index(ledger, S.WAITING) == ["j0", "j1", "j2"]
    assert [r.job.id for r in ledger.records("b")] == ["j0", "j1", "j2"]
    assert ledger.batch("b").jobs == 3  # type: ignore[union-attr]
    record = ledger.record("b", "j1")
    assert record is not None and record.job == jobs[1] and record.status is S.WAITING and record.queued_at == 2.0


def test_admission_fills_the_window_sets_submits_due_and_a_release_admits_the_next(redis_client: redis.Redis) -> None:
    ledger, timers = Ledger(redis_client), Timers(redis_client)
    open_batch(ledger, 5, max_in_flight=2)
    assert ledger.admit("b") == ["j0", "j1"]
    assert ledger.admit("b") == []
    assert ledger.in_flight("b") == 2
    assert timers.due_at(Timer.step("b", "j0")) is not None, "its submit is due"
    assert move(ledger, "j0", Move.SEND, attempts=1) is not None
    assert move(ledger, "j0", Move.ACCEPT, due_at=50.0, request_id="r-0") is not None
    assert timers.due_at(Timer.step("b", "j0")) == 50.0, "its first poll"
    applied = ledger.apply("b", plan(ledger.record("b", "j0"), Move.FAIL, JobUpdate(error_type="x"), 11.0))  # type: ignore[arg-type]
    assert applied is not None and applied.admitted == ["j2"], "the freed slot admitted the next, in the same step"
    assert timers.due_at(Timer.step("b", "j0")) is None, "a final job has no step"
    counts = ledger.counts("b")
    assert (counts[S.WAITING], counts[S.ADMITTED], counts[S.FAILED]) == (2, 2, 1)
    assert sorted(index(ledger, S.ADMITTED)) == ["j1", "j2"] and index(ledger, S.FAILED) == ["j0"]
    assert ledger.job_for_request("r-0") == ("b", "j0")


def test_a_move_is_applied_only_to_the_revision_its_mover_read(redis_client: redis.Redis) -> None:
    """A late step of attempt 1 must not undo attempt 2."""
    ledger = Ledger(redis_client)
    open_batch(ledger, 1)
    ledger.admit("b")
    move(ledger, "j0", Move.SEND, attempts=1)
    seen = ledger.record("b", "j0")
    assert seen is not None
    move(ledger, "j0", Move.ACCEPT, request_id="r-2")
    late = plan(seen, Move.ACCEPT, JobUpdate(request_id="r-1"), now=11.0)
    assert ledger.apply("b", late) is None
    assert ledger.record("b", "j0").request_id == "r-2"  # type: ignore[union-attr]
    assert ledger.job_for_request("r-1") is None


def test_a_refused_move_changes_nothing(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, 1)
    record = ledger.record("b", "j0")
    assert record is not None
    admitted = ledger.admit("b")
    stale = plan(record, Move.CANCEL, JobUpdate(error_type="cancelled"), now=5.0)
    assert admitted == ["j0"] and ledger.apply("b", stale) is None
    again = ledger.record("b", "j0")
    assert again is not None and again.status is S.ADMITTED and again.error_type is None
    assert ledger.counts("b")[S.CANCELLED] == 0 and index(ledger, S.CANCELLED) == []


def test_only_one_of_many_racing_workers_wins_a_move(redis_client: redis.Redis) -> None:
    """The guard that keeps two workers from sending the same job."""
    ledger = Ledger(redis_client)
    open_batch(ledger, 1)
    ledger.admit("b")
    seen = ledger.record("b", "j0")
    assert seen is not None
    wins: list[bool] = []
    threads = [threading.Thread(target=lambda: wins.append(
        ledger.apply("b", plan(seen, Move.SEND, JobUpdate(attempts=1), now=3.0)) is not None)) for _ in range(20)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 19 + [True]
    assert ledger.counts("b")[S.SUBMITTING] == 1


def test_window_holds_under_concurrent_admission(redis_client: redis.Redis) -> None:
    """Four workers admit and end jobs at once: each job is handed to one of them, the window is never exceeded."""
    ledger = Ledger(redis_client)
    open_batch(ledger, 200, max_in_flight=7)
    handed: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        queue = ledger.admit("b")
        while queue:
            job_id = queue.pop()
            assert ledger.in_flight("b") <= 7
            record = ledger.record("b", job_id)
            assert record is not None
            applied = ledger.apply("b", plan(record, Move.FAIL, JobUpdate(error_type="x"), now=10.0))
            assert applied is not None, "a job handed to this worker is this worker's"
            queue += applied.admitted
            with lock:
                handed.append(job_id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(handed) == sorted(f"j{n}" for n in range(200)), "each job handed out exactly once"
    counts = ledger.counts("b")
    assert counts[S.FAILED] == 200 and ledger.in_flight("b") == 0
    assert len(index(ledger, S.FAILED)) == 200 and ledger.failures_by_type("b") == {"x": 200}
    assert ledger.batch("b").state == "done"  # type: ignore[union-attr]


def test_a_cancelled_batch_admits_nothing(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, 3)
    ledger.set_batch_state("b", "cancelled")
    assert ledger.admit("b") == []


def test_a_changed_row_runs_again_unless_it_is_at_fal(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    jobs = open_batch(ledger, 2)
    ledger.admit("b")
    move(ledger, "j0", Move.FAIL, error_type="x")
    move(ledger, "j1", Move.SEND)
    edited = [Job(j.id, j.endpoint, {"prompt": "new"}, "fp-new-" + j.id, j.file, j.line, j.row) for j in jobs]
    assert ledger.sync_jobs("b", edited, now=9.0) == Counter(changed=1, in_flight=1)
    again = ledger.record("b", "j0")
    assert again is not None and again.status is S.WAITING and again.job.input == {"prompt": "new"}
    assert again.error_type is None and again.attempts == 0
    assert ledger.failures_by_type("b") == {}
    assert ledger.admit("b") == ["j0"]


def test_an_unconfirmed_row_is_not_recorded_again_with_a_new_input(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    jobs = open_batch(ledger, 1)
    ledger.admit("b")
    move(ledger, "j0", Move.SEND)
    move(ledger, "j0", Move.UNCONFIRM)  # fal may have it: its input stays what was sent
    edited = [Job(j.id, j.endpoint, {"prompt": "new"}, "fp-new", j.file, j.line, j.row) for j in jobs]
    assert ledger.sync_jobs("b", edited, now=9.0) == Counter(in_flight=1)


def test_an_unconfirmed_job_leaves_its_slot_and_rejoins_over_the_window_when_found(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, 3, max_in_flight=1)
    assert ledger.admit("b") == ["j0"]
    move(ledger, "j0", Move.SEND)
    lost = ledger.apply("b", plan(ledger.record("b", "j0"), Move.UNCONFIRM, JobUpdate(), 10.0))  # type: ignore[arg-type]
    assert lost is not None and lost.admitted == ["j1"], "its slot goes to the next job at once"
    found = move(ledger, "j0", Move.ADOPT, request_id="r-0")
    assert found is not None and found.status is S.QUEUED
    assert ledger.in_flight("b") == 2, "fal has its request: it is followed even with the window full"
    assert ledger.job_for_request("r-0") == ("b", "j0")


def test_a_request_another_job_holds_is_never_adopted(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, 2)
    ledger.admit("b")
    for job_id in ("j0", "j1"):
        move(ledger, job_id, Move.SEND)
    move(ledger, "j0", Move.ACCEPT, request_id="r-same")
    move(ledger, "j1", Move.UNCONFIRM)
    assert move(ledger, "j1", Move.ADOPT, request_id="r-same") is None
    assert ledger.record("b", "j1").status is S.UNCONFIRMED  # type: ignore[union-attr]
    assert ledger.job_for_request("r-same") == ("b", "j0")


def test_absent_goes_back_in_line_and_is_admitted_when_a_slot_is_free(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, 1)
    ledger.admit("b")
    move(ledger, "j0", Move.SEND)
    move(ledger, "j0", Move.UNCONFIRM)
    absent = ledger.apply("b", plan(ledger.record("b", "j0"), Move.ABSENT, JobUpdate(), 10.0))  # type: ignore[arg-type]
    assert absent is not None and absent.admitted == ["j0"], "the window had room: its new submit is due"
    assert ledger.record("b", "j0").status is S.ADMITTED  # type: ignore[union-attr]


def test_a_cancel_is_tallied_with_its_move(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, 2)
    for job_id in ("j0", "j1"):
        record = ledger.record("b", job_id)
        assert record is not None
        ledger.apply("b", plan(record, Move.CANCEL, JobUpdate(), 10.0), tally="never_sent")
    assert ledger.tallies("b") == {"never_sent": 2}
    ledger.reset_tallies("b")
    assert ledger.tallies("b") == {}


def test_the_longest_run_is_kept(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    assert ledger.longest_run_s("b") is None
    for run_s in (3.0, 9.5, 2.0):
        ledger.note_run_time("b", run_s)
    assert ledger.longest_run_s("b") == 9.5


def test_the_batch_ends_with_its_last_job_and_an_unattended_one_gets_its_end_timer(redis_client: redis.Redis) -> None:
    ledger, timers = Ledger(redis_client), Timers(redis_client)
    open_batch(ledger, 2, report_when_done=True)
    ledger.admit("b")
    first = ledger.apply("b", plan(ledger.record("b", "j0"), Move.FAIL, JobUpdate(), 10.0))  # type: ignore[arg-type]
    assert first is not None and ledger.batch("b").state == "open"  # type: ignore[union-attr]
    last = ledger.apply("b", plan(ledger.record("b", "j1"), Move.CANCEL, JobUpdate(), 12.0))  # type: ignore[arg-type]
    assert last is not None
    info = ledger.batch("b")
    assert info is not None and (info.state, info.ended_at) == ("done", 12.0)
    assert timers.due_at(Timer.end("b")) == 12.0
    requeued = ledger.apply("b", plan(ledger.record("b", "j0"), Move.REQUEUE, JobUpdate(), 13.0))  # type: ignore[arg-type]
    assert requeued is not None
    info = ledger.batch("b")
    assert info is not None and (info.state, info.ended_at) == ("open", None), "a retried batch is open again"
    assert timers.due_at(Timer.end("b")) is None


def test_a_batch_whose_jobs_are_all_final_at_sync_is_done(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    jobs = open_batch(ledger, 1)
    ledger.admit("b")
    move(ledger, "j0", Move.CANCEL)
    ledger.save_batch(ledger.batch("b").model_copy(update={"state": "open", "ended_at": None}))  # type: ignore[union-attr]
    ledger.sync_jobs("b", jobs, now=20.0)  # a rerun with nothing new
    ledger.admit("b")
    assert ledger.batch("b").state == "done"  # type: ignore[union-attr]


def test_run_times_keep_the_latest(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    for n in range(60):
        ledger.note_run_time("b", float(n))
    recent = ledger.recent_run_times("b")
    assert len(recent) == 50 and recent[0] == 59.0


@pytest.mark.parametrize("jobs", [2500])
def test_large_batches_sync_in_chunks(redis_client: redis.Redis, jobs: int) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, jobs)
    assert ledger.counts("b")[S.WAITING] == jobs
    assert [r.job.id for r in ledger.records("b")] == [f"j{n}" for n in range(jobs)]


def test_job_ids_by_last_change_and_latest(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, 3, max_in_flight=3)
    ledger.admit("b")
    for n, job_id in enumerate(("j2", "j0", "j1")):
        ledger.apply("b", plan(ledger.record("b", job_id), Move.FAIL, JobUpdate(), 100.0 + n))  # type: ignore[arg-type]
    assert ledger.job_ids("b", [S.FAILED]) == ["j2", "j0", "j1"]
    assert ledger.job_ids("b", [S.FAILED], changed_before=101.5) == ["j2", "j0"]
    assert ledger.job_ids("b", [S.FAILED], latest=2) == ["j0", "j1"]


def test_timers_are_claimed_once_begun_by_one_worker_and_come_back_when_it_dies(redis_client: redis.Redis) -> None:
    timers = Timers(redis_client)
    timer = Timer.step("b", "j0")
    timers.schedule([timer], due_at=100.0)
    assert timers.claim_due(99.0, 30.0, 10) == []
    assert timers.claim_due(100.0, 30.0, 10) == [timer]
    assert timers.claim_due(100.0, 30.0, 10) == [], "claimed: not sent twice"
    first, second = worker_mark(), worker_mark()
    assert timers.begin(timer, first, 101.0, lease_s=15.0) == "ok"
    assert timers.begin(timer, first, 101.5, lease_s=15.0) == "ok", "the same call again: its answer was lost"
    assert timers.begin(timer, second, 102.0, lease_s=15.0) == "busy"
    assert timers.renew({timer: first}, 110.0, 15.0) == 1 and timers.due_at(timer) == 125.0
    assert timers.claim_due(124.0, 30.0, 10, take_over_before=110.0) == []
    assert timers.begin(timer, second, 126.0, lease_s=15.0) == "busy", "only a dispatcher takes a lapsed lease over"
    assert timers.claim_due(126.0, 30.0, 10) == [], "a dispatcher just back from an outage takes none over"
    assert timers.claim_due(126.0, 30.0, 10, take_over_before=120.0) == [], "within the grace after its lapse"
    assert timers.claim_due(141.0, 30.0, 10, take_over_before=126.0) == [timer], "its worker stopped renewing: dead"
    assert timers.begin(timer, second, 142.0, lease_s=15.0) == "ok"
    assert not timers.finish(timer, first, None), "the dead worker's mark no longer holds it"
    assert timers.finish(timer, second, 200.0) and timers.tries(timer) == 1
    assert timers.begin(timer, first, 150.0, lease_s=15.0) == "early", "a stale message for a later time"
    timers.forget([timer])
    assert timers.begin(timer, first, 250.0, lease_s=15.0) == "gone"


def test_a_new_row_recorded_into_a_batch_that_ended_opens_it_again(redis_client: redis.Redis) -> None:
    ledger, timers = Ledger(redis_client), Timers(redis_client)
    open_batch(ledger, 1, report_when_done=True)
    ledger.admit("b")
    move(ledger, "j0", Move.FAIL, error_type="x")
    assert ledger.batch("b").state == "done" and timers.due_at(Timer.end("b")) is not None  # type: ignore[union-attr]
    assert ledger.sync_jobs("b", [make_job(0), make_job(1)], now=30.0) == Counter(kept=1, added=1)
    info = ledger.batch("b")
    assert info is not None and (info.state, info.ended_at) == ("open", None)
    assert timers.due_at(Timer.end("b")) is None, "it has not ended: no report yet"
    assert ledger.admit("b") == ["j1"]


def test_request_urls_are_kept_whole_when_they_do_not_follow_the_first_base(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, 2)
    ledger.admit("b")
    for job_id, host in (("j0", "queue.fal.run"), ("j1", "queue2.example")):
        move(ledger, job_id, Move.SEND, attempts=1)
        base = f"https://{host}/fal-ai/echo/requests/"
        move(ledger, job_id, Move.ACCEPT, request_id=f"r-{job_id}", response_url=f"{base}r-{job_id}",
             status_url=f"{base}r-{job_id}/status", cancel_url=f"{base}r-{job_id}/cancel")  # fmt: skip
    first, second = ledger.record("b", "j0"), ledger.record("b", "j1")
    assert first is not None and first.status_url == "https://queue.fal.run/fal-ai/echo/requests/r-j0/status"
    assert second is not None and second.cancel_url == "https://queue2.example/fal-ai/echo/requests/r-j1/cancel"
    assert redis_client.hexists(ledger.keys.side("b", "status_url"), "j1") and not \
        redis_client.hexists(ledger.keys.side("b", "status_url"), "j0"), "stored whole only when not derived"  # fmt: skip


def test_a_move_that_keeps_the_step_is_refused_to_a_worker_that_no_longer_holds_it(redis_client: redis.Redis) -> None:
    ledger, timers = Ledger(redis_client), Timers(redis_client)
    open_batch(ledger, 1)
    ledger.admit("b")
    timers.claim_due(10**12, 30.0, 10)
    mine, other = worker_mark(), worker_mark()
    assert timers.begin(Timer.step("b", "j0"), mine, 100.0, 10.0) == "ok"
    record = ledger.record("b", "j0")
    assert record is not None
    sending = plan(record, Move.SEND, JobUpdate(attempts=1), now=101.0)
    assert ledger.apply("b", sending, keep_claim=other, lease_until=111.0) is None, "its lease was taken over"
    assert ledger.apply("b", sending, keep_claim=mine, lease_until=111.0) is not None
    assert timers.due_at(Timer.step("b", "j0")) == 111.0, "still held by its worker, running it now"


def test_a_job_is_never_put_back_in_line_in_a_cancelled_batch(redis_client: redis.Redis) -> None:
    """A lost submit proven absent as its batch is cancelled would wait in line forever: the move is refused."""
    ledger = Ledger(redis_client)
    open_batch(ledger, 1)
    ledger.admit("b")
    move(ledger, "j0", Move.SEND)
    move(ledger, "j0", Move.UNCONFIRM)
    ledger.set_batch_state("b", "cancelled")
    assert move(ledger, "j0", Move.ABSENT) is None
    assert ledger.record("b", "j0").status is S.UNCONFIRMED  # type: ignore[union-attr]
    assert move(ledger, "j0", Move.CANCEL) is not None
    assert ledger.batch("b").ended_at is not None  # type: ignore[union-attr]


def test_a_file_name_another_job_of_the_batch_holds_is_not_given_again(redis_client: redis.Redis) -> None:
    """An edited manifest's rerun: a new job named as an earlier one is named by its id, never over its files."""
    ledger = Ledger(redis_client)
    open_batch(ledger, 0)
    first = replace(make_job(1), name="s@seed7")
    ledger.sync_jobs("b", [first], now=2.0)
    edited = replace(make_job(2), name="s@seed7")  # another input now reads as that variant
    assert ledger.sync_jobs("b", [first, edited], now=3.0) == Counter(kept=1, added=1)
    stems = {r.job.id: r.job.file_stem for r in ledger.records("b")}
    assert stems == {"j1": "s@seed7", "j2": "j2"}
    ledger.purge("b")
    assert not redis_client.exists(ledger.keys.names("b"))


# --- the cost cap ----------------------------------------------------------------------------------------------


def test_a_cap_of_ten_attempts_worth_admits_exactly_ten_sends_however_many_race(redis_client: redis.Redis) -> None:
    """30 jobs sent by 3 racing workers against a cap of exactly ten attempts' worth: ten go, twenty are refused."""
    ledger = Ledger(redis_client)
    open_batch(ledger, 30, max_in_flight=30, max_cost_nusd=10 * 50_000_000)
    ledger.admit("b")
    outcomes: list[object] = []

    def worker(ids: list[str]) -> None:
        for job_id in ids:
            seen = ledger.record("b", job_id)
            assert seen is not None
            outcomes.append(ledger.apply("b", plan(seen, Move.SEND, JobUpdate(attempts=1, sent_cost_nusd=50_000_000),
                                                   now=3.0)))  # fmt: skip

    threads = [threading.Thread(target=worker, args=([f"j{n}" for n in range(k, 30, 3)],)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = [o for o in outcomes if isinstance(o, OverBudget)]
    assert len(outcomes) == 30 and len(refused) == 20
    assert ledger.counts("b")[S.SUBMITTING] == 10 and ledger.spent_nusd("b") == 500_000_000
    assert {o.cap_nusd for o in refused} == {500_000_000} and max(o.spent_nusd for o in refused) == 500_000_000


def test_charges_are_kept_without_a_cap_and_given_back_when_fal_never_had_the_attempt(
    redis_client: redis.Redis,
) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, 2, max_in_flight=2)
    ledger.admit("b")
    sent = move(ledger, "j0", Move.SEND, attempts=1, sent_cost_nusd=30)
    move(ledger, "j1", Move.SEND, attempts=1, sent_cost_nusd=30)
    assert sent is not None and sent.charged_nusd == 30 and ledger.spent_nusd("b") == 60
    back = move(ledger, "j1", Move.UNSENT, attempts=0)
    assert back is not None and back.charged_nusd == 0 and ledger.spent_nusd("b") == 30
    move(ledger, "j0", Move.ACCEPT, request_id="r0")
    assert ledger.record("b", "j0").charged_nusd == 30  # type: ignore[union-attr]  # fal has it: it may bill it


def test_a_refund_is_never_refused_and_a_cap_lowered_below_the_spend_refuses_the_next_charge(
    redis_client: redis.Redis,
) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, 2, max_in_flight=2)
    ledger.admit("b")
    move(ledger, "j0", Move.SEND, attempts=1, sent_cost_nusd=80)
    ledger.save_batch(ledger.batch("b").model_copy(update={"max_cost_nusd": 50}))  # type: ignore[union-attr]
    assert move(ledger, "j0", Move.UNSENT, attempts=0) is not None and ledger.spent_nusd("b") == 0
    record = ledger.record("b", "j1")
    assert record is not None
    assert isinstance(ledger.apply("b", plan(record, Move.SEND, JobUpdate(sent_cost_nusd=51), now=3.0)), OverBudget)
    assert ledger.record("b", "j1").status is S.ADMITTED and ledger.spent_nusd("b") == 0  # type: ignore[union-attr]
    assert ledger.apply("b", plan(record, Move.SEND, JobUpdate(sent_cost_nusd=50), now=3.0)) is not None


def test_purge_forgets_what_a_batch_spent(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    open_batch(ledger, 1)
    ledger.admit("b")
    move(ledger, "j0", Move.SEND, attempts=1, sent_cost_nusd=80)
    ledger.purge("b")
    assert ledger.spent_nusd("b") == 0 and not redis_client.exists(ledger.keys.spent("b"))


def test_a_row_recorded_again_with_a_new_input_keeps_what_it_was_charged(redis_client: redis.Redis) -> None:
    """Spent is spent: the job's charge and the batch's spend keep agreeing, so the report's total is status's."""
    ledger = Ledger(redis_client)
    open_batch(ledger, 1)
    ledger.admit("b")
    move(ledger, "j0", Move.SEND, attempts=1, sent_cost_nusd=50)
    move(ledger, "j0", Move.UNCONFIRM)
    move(ledger, "j0", Move.FAIL, error_type="submit_unconfirmed")
    assert ledger.sync_jobs("b", [make_job(0, prompt="edited")], now=20.0) == Counter(changed=1)
    record = ledger.record("b", "j0")
    assert record is not None and record.status is S.WAITING and record.attempts == 0
    assert (record.charged_nusd, record.sent_cost_nusd, ledger.spent_nusd("b")) == (50, 0, 50)
