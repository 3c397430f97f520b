"""The lifecycle as tables: which moves are allowed from where, and what each outcome of a step leads to."""

from __future__ import annotations

from dataclasses import replace

import pytest

from jobs.decisions import Call, CallFailed, GiveUp, Limits, Reconcile, RetryLater, StepCrashed, SubmitAgain, decide
from jobs.errors import IllegalMoveError
from jobs.lifecycle import KEEP, STEP_OF, TRANSITIONS, Charge, Guard, JobUpdate, Move, Slot, Step, plan, refunded
from jobs.record import Attempt, JobRecord, OutputFile
from jobs.status import JobStatus
from tests.test_record import JOB

S = JobStatus
LIMITS = Limits(call_retries=3, unreachable_calls=5, step_errors=2)


def record(status: JobStatus, **values: object) -> JobRecord:
    return replace(JobRecord(JOB), status=status, **values)  # type: ignore[arg-type]


# --- the table -------------------------------------------------------------------------------------------------

ALLOWED = {
    Move.RECORD: {S.WAITING, S.SUCCEEDED, S.FAILED, S.CANCELLED},
    Move.ADMIT: {S.WAITING},
    Move.SEND: {S.ADMITTED},
    Move.UNSENT: {S.SUBMITTING},
    Move.ACCEPT: {S.SUBMITTING},
    Move.UNCONFIRM: {S.SUBMITTING},
    Move.ADOPT: {S.UNCONFIRMED},
    Move.ABSENT: {S.UNCONFIRMED},
    Move.SEEN_QUEUED: {S.QUEUED, S.RUNNING},
    Move.SEEN_RUNNING: {S.QUEUED, S.RUNNING},
    Move.COMPLETE: {S.QUEUED, S.RUNNING},
    Move.RETRY: {S.ADMITTED, S.UNCONFIRMED, S.QUEUED, S.RUNNING, S.COLLECTING},
    Move.RESUBMIT: {S.QUEUED, S.RUNNING, S.COLLECTING},
    Move.SUCCEED: {S.COLLECTING},
    Move.FAIL: {S.WAITING, S.ADMITTED, S.SUBMITTING, S.UNCONFIRMED, S.QUEUED, S.RUNNING, S.COLLECTING},
    # A job being submitted is cancelled once it is known whether fal has it; one being collected never.
    Move.CANCEL: {S.WAITING, S.ADMITTED, S.UNCONFIRMED, S.QUEUED, S.RUNNING},
    Move.REFUSED: {S.SUBMITTING},
    Move.REQUEUE: {S.FAILED, S.CANCELLED},
    Move.RECHECK: {S.CANCELLED},
}


@pytest.mark.parametrize("move", list(Move))
@pytest.mark.parametrize("status", list(S))
def test_each_move_is_allowed_exactly_from_its_sources(move: Move, status: JobStatus) -> None:
    before = record(status)
    if status in ALLOWED[move]:
        after = plan(before, move, JobUpdate(), now=5.0)
        assert after.source is status and after.record.revision == before.revision + 1
    else:
        with pytest.raises(IllegalMoveError, match=f"{move.value} is not allowed from {status.value}"):
            plan(before, move, JobUpdate(), now=5.0)


@pytest.mark.parametrize(
    ("move", "target", "slot", "guard"),
    [
        (Move.RECORD, S.WAITING, Slot.KEEP, Guard.NEW_INPUT),
        (Move.ADMIT, S.ADMITTED, Slot.TAKE, Guard.ROOM),
        (Move.SEND, S.SUBMITTING, Slot.KEEP, Guard.AS_SEEN),
        (Move.UNSENT, S.ADMITTED, Slot.KEEP, Guard.AS_SEEN),
        (Move.ACCEPT, S.QUEUED, Slot.KEEP, Guard.AS_SEEN),
        (Move.UNCONFIRM, S.UNCONFIRMED, Slot.RELEASE, Guard.AS_SEEN),
        (Move.ADOPT, S.QUEUED, Slot.REJOIN, Guard.AS_SEEN),
        (Move.ABSENT, S.WAITING, Slot.KEEP, Guard.AS_SEEN),
        (Move.SEEN_QUEUED, S.QUEUED, Slot.KEEP, Guard.AS_SEEN),
        (Move.SEEN_RUNNING, S.RUNNING, Slot.KEEP, Guard.AS_SEEN),
        (Move.COMPLETE, S.COLLECTING, Slot.KEEP, Guard.AS_SEEN),
        (Move.RETRY, None, Slot.KEEP, Guard.AS_SEEN),
        (Move.RESUBMIT, S.ADMITTED, Slot.KEEP, Guard.AS_SEEN),
        (Move.SUCCEED, S.SUCCEEDED, Slot.RELEASE, Guard.AS_SEEN),
        (Move.FAIL, S.FAILED, Slot.RELEASE, Guard.AS_SEEN),
        (Move.CANCEL, S.CANCELLED, Slot.RELEASE, Guard.AS_SEEN),
        (Move.REFUSED, S.FAILED, Slot.RELEASE, Guard.AS_SEEN),
        (Move.REQUEUE, S.WAITING, Slot.KEEP, Guard.AS_SEEN),
        (Move.RECHECK, S.QUEUED, Slot.REJOIN, Guard.AS_SEEN),
    ],
)
def test_the_table(move: Move, target: JobStatus | None, slot: Slot, guard: Guard) -> None:
    row = TRANSITIONS[move]
    assert (row.target, row.slot, row.guard) == (target, slot, guard)
    assert row.sources == ALLOWED[move]


def test_a_slot_is_held_exactly_by_the_statuses_that_say_so() -> None:
    """Following the table from WAITING, a job holds a slot exactly while its status `holds_slot`."""
    for move, row in TRANSITIONS.items():
        for source in row.sources:
            target = row.target or source
            holds_after = {Slot.TAKE: True, Slot.REJOIN: True, Slot.RELEASE: False,
                           Slot.KEEP: source.holds_slot}[row.slot]  # fmt: skip
            assert holds_after == target.holds_slot, (move, source, target)


@pytest.mark.parametrize(
    ("status", "step"),
    [(S.WAITING, None), (S.ADMITTED, Step.SUBMIT), (S.SUBMITTING, Step.SUBMIT), (S.UNCONFIRMED, Step.RECONCILE),
     (S.QUEUED, Step.POLL), (S.RUNNING, Step.POLL), (S.COLLECTING, Step.COLLECT), (S.SUCCEEDED, None),
     (S.FAILED, None), (S.CANCELLED, None)],
)  # fmt: skip
def test_every_job_that_holds_a_slot_has_a_step_due(status: JobStatus, step: Step | None) -> None:
    """And so has an unconfirmed one, which leaves its slot while fal's history is searched."""
    assert STEP_OF.get(status) == step
    assert (step is not None) == status.has_step
    assert status.holds_slot == (status.has_step and status is not S.UNCONFIRMED)


# --- plans -----------------------------------------------------------------------------------------------------


def test_a_plan_carries_only_what_changes_as_stored_values() -> None:
    before = record(S.SUBMITTING, attempts=1, call_failures=2, revision=4)
    done = plan(before, Move.ACCEPT, JobUpdate(request_id="r-1", submitted_at=10.0, queue_position=3), now=11.0)
    assert done.target is S.QUEUED and done.step is Step.POLL
    assert done.fields == {"request_id": "r-1", "submitted_at": 10.0, "queue_position": 3, "call_failures": 0,
                           "step_errors": 0, "updated_at": 11.0}  # fmt: skip
    assert (done.record.request_id, done.record.attempts, done.record.revision) == ("r-1", 1, 5)


def test_none_clears_a_field_and_keep_leaves_it() -> None:
    before = record(S.RUNNING, request_id="r-1", queue_position=2)
    done = plan(before, Move.RESUBMIT, JobUpdate(request_id=None, queue_position=KEEP), now=1.0)
    assert "queue_position" not in done.fields and done.fields["request_id"] is None
    assert done.record.queue_position == 2


def test_outputs_and_history_are_stored_as_plain_data() -> None:
    output = OutputFile(0, "images/j_0.png", "https://x/y.png", "image/png", 8, 8, 100, 7)
    attempt = Attempt(1, "r-1", "runner_server_error", "boom", 1.0, 2.0)
    done = plan(record(S.COLLECTING), Move.SUCCEED, JobUpdate(outputs=(output,), history=(attempt,)), now=3.0)
    assert done.fields["outputs"] == [{"index": 0, "path": "images/j_0.png", "url": "https://x/y.png",
                                       "content_type": "image/png", "width": 8, "height": 8, "size_bytes": 100,
                                       "seed": 7}]  # fmt: skip
    assert done.fields["history"][0]["request_id"] == "r-1"


@pytest.mark.parametrize(
    ("status", "move", "resets"),
    [(S.RUNNING, Move.RETRY, False), (S.ADMITTED, Move.SEND, False), (S.SUBMITTING, Move.UNSENT, False),
     (S.RUNNING, Move.SEEN_RUNNING, True), (S.SUBMITTING, Move.ACCEPT, True), (S.RUNNING, Move.FAIL, True)],
)  # fmt: skip
def test_only_progress_resets_the_counts_of_failures_in_a_row(status: JobStatus, move: Move, resets: bool) -> None:
    done = plan(record(status, call_failures=4, step_errors=1), move, JobUpdate(), now=1.0)
    assert (done.record.call_failures, done.record.step_errors) == ((0, 0) if resets else (4, 1))


def test_a_retry_sets_the_count_it_is_told() -> None:
    done = plan(record(S.RUNNING, call_failures=4), Move.RETRY, JobUpdate(call_failures=5), now=1.0)
    assert done.target is S.RUNNING and done.record.call_failures == 5


@pytest.mark.parametrize(
    ("move", "charge"),
    [(Move.SEND, Charge.ATTEMPT), (Move.UNSENT, Charge.REFUND), (Move.ABSENT, Charge.REFUND),
     (Move.REFUSED, Charge.REFUND), (Move.ACCEPT, Charge.NONE), (Move.RESUBMIT, Charge.NONE),
     (Move.FAIL, Charge.NONE), (Move.CANCEL, Charge.NONE), (Move.REQUEUE, Charge.NONE)],
)  # fmt: skip
def test_which_moves_charge_an_attempt_and_which_give_it_back(move: Move, charge: Charge) -> None:
    assert TRANSITIONS[move].charge is charge


def test_each_attempt_sent_is_charged_and_one_fal_never_had_is_given_back() -> None:
    """Attempts add up (a resubmit is charged again); UNSENT, ABSENT and REFUSED give back only the latest."""
    first = plan(record(S.ADMITTED), Move.SEND, JobUpdate(attempts=1, sent_cost_nusd=50), now=1.0)
    assert (first.charge_nusd, first.record.charged_nusd, first.record.sent_cost_nusd) == (50, 50, 50)
    billed = replace(first.record, status=S.ADMITTED)  # a model error, resubmitted: the first attempt stays charged
    second = plan(billed, Move.SEND, JobUpdate(attempts=2, sent_cost_nusd=50), now=2.0)
    assert (second.charge_nusd, second.record.charged_nusd) == (50, 100)
    for back in (Move.UNSENT, Move.REFUSED):
        given_back = plan(second.record, back, JobUpdate(), now=3.0)
        assert (given_back.charge_nusd, given_back.record.charged_nusd, given_back.record.sent_cost_nusd) == \
            (-50, 50, 0)  # fmt: skip
    absent = plan(replace(second.record, status=S.UNCONFIRMED), Move.ABSENT, JobUpdate(), now=3.0)
    assert absent.charge_nusd == -50
    accepted = plan(second.record, Move.ACCEPT, JobUpdate(request_id="r"), now=3.0)
    assert accepted.charge_nusd == 0 and accepted.record.charged_nusd == 100


def test_a_send_that_names_no_cost_charges_nothing_and_forgets_the_last_one() -> None:
    """Else a later refund would give back an earlier attempt's charge, which fal may have billed."""
    earlier = record(S.ADMITTED, charged_nusd=70, sent_cost_nusd=70)
    sent = plan(earlier, Move.SEND, JobUpdate(attempts=2), now=1.0)
    assert (sent.charge_nusd, sent.record.sent_cost_nusd) == (0, 0)
    assert plan(sent.record, Move.UNSENT, JobUpdate(), now=2.0).charge_nusd == 0


def test_a_move_that_ends_a_lost_submit_proven_absent_gives_its_charge_back() -> None:
    lost = record(S.UNCONFIRMED, charged_nusd=90, sent_cost_nusd=40)
    done = plan(lost, Move.FAIL, refunded(JobUpdate(error_type="submit_lost"), lost), now=1.0)
    assert (done.charge_nusd, done.record.charged_nusd, done.record.sent_cost_nusd) == (-40, 50, 0)


def test_job_update_knows_every_field_a_move_may_set() -> None:
    settable = set(JobUpdate.__dataclass_fields__)
    stored = set(JobRecord.__dataclass_fields__) - {"job", "status", "revision", "updated_at"}
    assert settable == stored


# --- decisions ---------------------------------------------------------------------------------------------------


def failed(call: Call, **values: object) -> CallFailed:
    return CallFailed(call, values.pop("error_type", "e"), "msg", **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seen", "job", "expected"),
    [
        # submit: a failure before anything left is retried; a lost answer never is
        (failed(Call.SUBMIT, transient=True), record(S.ADMITTED), RetryLater),
        (failed(Call.SUBMIT, transient=True), record(S.ADMITTED, call_failures=3), GiveUp),
        (failed(Call.SUBMIT, unconfirmed=True), record(S.SUBMITTING), GiveUp),
        (failed(Call.SUBMIT, status_code=422), record(S.SUBMITTING), GiveUp),
        (failed(Call.SUBMIT, status_code=404), record(S.SUBMITTING), GiveUp),  # an unknown app: not a lost request
        # status: fal may still run it, so never a new attempt; 404 means fal no longer has it
        (failed(Call.STATUS, transient=True), record(S.QUEUED, call_failures=4), RetryLater),
        (failed(Call.STATUS, transient=True), record(S.QUEUED, call_failures=5), GiveUp),
        (failed(Call.STATUS, status_code=404), record(S.RUNNING, attempts=1), SubmitAgain),
        (failed(Call.STATUS, status_code=404), record(S.RUNNING, attempts=3), GiveUp),
        (failed(Call.STATUS, status_code=401), record(S.RUNNING, attempts=1), GiveUp),
        # result: a model's 5xx or a lost result is worth a new attempt, unless fal says it is not
        (failed(Call.RESULT, status_code=500), record(S.COLLECTING, attempts=1), SubmitAgain),
        (failed(Call.RESULT, status_code=504), record(S.COLLECTING, attempts=1), SubmitAgain),
        (failed(Call.RESULT, status_code=500, job_retryable=False), record(S.COLLECTING, attempts=1), GiveUp),
        (failed(Call.RESULT, status_code=500), record(S.COLLECTING, attempts=3), GiveUp),
        (failed(Call.RESULT, status_code=404), record(S.COLLECTING, attempts=1), SubmitAgain),
        (failed(Call.RESULT, status_code=422), record(S.COLLECTING, attempts=1), GiveUp),
        (failed(Call.RESULT, transient=True), record(S.COLLECTING, call_failures=5), GiveUp),
        (failed(Call.RESULT, not_ready=True, transient=True), record(S.COLLECTING), RetryLater),
        # download: a cut-short file is fetched again; a file that is not an image is not
        (failed(Call.DOWNLOAD, transient=True), record(S.COLLECTING, call_failures=2), RetryLater),
        (failed(Call.DOWNLOAD, transient=True), record(S.COLLECTING, call_failures=3), GiveUp),
        (failed(Call.DOWNLOAD), record(S.COLLECTING), GiveUp),
        # a step that blew up runs again, on its own budget
        (StepCrashed("boom"), record(S.RUNNING, step_errors=1), RetryLater),
        (StepCrashed("boom"), record(S.RUNNING, step_errors=2), GiveUp),
        (StepCrashed("boom"), record(S.SUBMITTING), GiveUp),  # the request may have left
    ],
)  # fmt: skip
def test_decide(seen: CallFailed | StepCrashed, job: JobRecord, expected: type) -> None:
    assert type(decide(seen, job, max_attempts=3, limits=LIMITS, rand=0.5)) is expected


@pytest.mark.parametrize(
    ("seen", "job", "expected", "error_type"),
    [
        # a lost submit, or a worker that died sending it: looked for in fal's history, never sent again blind
        (failed(Call.SUBMIT, unconfirmed=True), record(S.SUBMITTING), Reconcile, None),
        (StepCrashed("boom"), record(S.SUBMITTING), Reconcile, None),
        # the history's outages are waited out; a history that refuses us leaves the job to a person
        (failed(Call.HISTORY, transient=True), record(S.UNCONFIRMED, call_failures=4), RetryLater, None),
        (failed(Call.HISTORY, transient=True), record(S.UNCONFIRMED, call_failures=5), GiveUp, "submit_unconfirmed"),
        (failed(Call.HISTORY, status_code=403), record(S.UNCONFIRMED), GiveUp, "submit_unconfirmed"),
        # a cancel that fails in passing is tried again (any other failure is the poll step's to ride out)
        (failed(Call.CANCEL, transient=True), record(S.RUNNING), RetryLater, None),
        # fal cancelled it: submitted again, whatever the attempts, when the user retried it after a cancel...
        (failed(Call.RESULT, status_code=499), record(S.COLLECTING, attempts=3, error_type="cancelled"), SubmitAgain,
         None),
        # ... else someone else cancelled it at fal: not sent again, and no loop
        (failed(Call.RESULT, status_code=499, error_type="client_cancelled"), record(S.COLLECTING, attempts=1),
         GiveUp, "client_cancelled"),
        # a reconcile step that keeps blowing up leaves the job to a person, never to a blind retry
        (StepCrashed("boom"), record(S.UNCONFIRMED, step_errors=2), GiveUp, "submit_unconfirmed"),
    ],
)  # fmt: skip
def test_decide_with_a_request_history(seen: CallFailed | StepCrashed, job: JobRecord, expected: type,
                                       error_type: str | None) -> None:  # fmt: skip
    decision = decide(seen, job, max_attempts=3, limits=LIMITS, rand=0.5, reconcilable=True)
    assert type(decision) is expected
    if isinstance(decision, GiveUp):
        assert decision.error_type == error_type and not decision.cancel_at_fal
    if isinstance(decision, Reconcile):
        assert "request history" in decision.message


def test_without_a_history_a_lost_submit_ends_with_the_advice_to_check_fal() -> None:
    decision = decide(failed(Call.SUBMIT, unconfirmed=True), record(S.SUBMITTING), 3, LIMITS, 0.5)
    assert isinstance(decision, GiveUp) and decision.error_type == "submit_unconfirmed"
    assert "check fal's dashboard" in decision.message


def test_the_retry_counter_bug_a_poll_with_many_failed_calls_survives_one_crash() -> None:
    """Regression: 8 transient status failures, then one unexpected error, used to fail the job at once."""
    limits = Limits()  # the defaults: 120 unreachable calls, 8 step errors
    polling = record(S.RUNNING, attempts=1, call_failures=limits.step_errors, request_id="r-1")
    decision = decide(StepCrashed("ConnectionError: Redis restarted"), polling, 3, limits, 0.5)
    assert isinstance(decision, RetryLater) and decision.budget == "step_errors"
    again = decide(failed(Call.STATUS, transient=True), polling, 3, limits, 0.5)
    assert isinstance(again, RetryLater) and again.budget == "call_failures"


@pytest.mark.parametrize(
    ("seen", "refused"),
    [(failed(Call.SUBMIT, status_code=422), True), (failed(Call.SUBMIT, status_code=401), True),
     (failed(Call.SUBMIT, unconfirmed=True), False), (failed(Call.SUBMIT, transient=True), False),
     (failed(Call.SUBMIT, status_code=200), False),  # an answer that is no submit's: fal may have taken it
     (failed(Call.RESULT, status_code=422), False),  # a model's error after inference may be billed
     (failed(Call.RESULT, status_code=500), True), (failed(Call.RESULT, status_code=504), True),
     (failed(Call.RESULT, status_code=500, job_retryable=False), True)],
)  # fmt: skip
def test_only_a_submit_fal_refused_or_a_result_fal_failed_itself_is_not_billed(seen: CallFailed,
                                                                               refused: bool) -> None:
    job = record(S.SUBMITTING if seen.call is Call.SUBMIT else S.COLLECTING, call_failures=3, attempts=3)
    decision = decide(seen, job, 3, LIMITS, 0.5)
    assert isinstance(decision, GiveUp) and decision.unbilled is refused


def test_a_new_attempt_after_fal_s_own_failure_gives_the_last_one_back() -> None:
    decision = decide(failed(Call.RESULT, status_code=500), record(S.COLLECTING, attempts=1), 3, LIMITS, 0.5)
    assert decision == SubmitAgain("e", "msg", unbilled=True)
    lost = decide(failed(Call.RESULT, status_code=404), record(S.COLLECTING, attempts=1), 3, LIMITS, 0.5)
    assert lost == SubmitAgain("e", "msg", unbilled=False)  # fal lost it, perhaps after it ran


@pytest.mark.parametrize(
    ("seen", "status", "error_type", "cancel_at_fal"),
    [
        (failed(Call.STATUS, transient=True), S.RUNNING, "status_unreachable", True),
        (failed(Call.STATUS, status_code=401, error_type="http_401"), S.QUEUED, "http_401", True),
        (StepCrashed("boom"), S.RUNNING, "internal_error", True),
        (StepCrashed("boom"), S.COLLECTING, "internal_error", False),  # it completed: nothing runs to cancel
        (StepCrashed("boom"), S.SUBMITTING, "submit_unconfirmed", False),
        (failed(Call.RESULT, transient=True), S.COLLECTING, "result_unreachable", False),
        (failed(Call.SUBMIT, unconfirmed=True), S.SUBMITTING, "submit_unconfirmed", False),
    ],
)  # fmt: skip
def test_giving_up_names_why_and_cancels_what_may_still_run(
    seen: CallFailed | StepCrashed, status: JobStatus, error_type: str, cancel_at_fal: bool
) -> None:
    exhausted = record(status, attempts=3, call_failures=99, step_errors=99)
    decision = decide(seen, exhausted, 3, LIMITS, 0.5)
    assert isinstance(decision, GiveUp)
    assert (decision.error_type, decision.cancel_at_fal) == (error_type, cancel_at_fal)


@pytest.mark.parametrize(
    ("seen", "failures", "delay_s"),
    [
        (failed(Call.SUBMIT, transient=True), 0, 0.1),  # fal_client's base, jitter factor 1.0
        (failed(Call.SUBMIT, transient=True), 2, 0.4),
        (failed(Call.SUBMIT, transient=True, retry_after_s=7.0), 2, 7.0),  # the server's word
        (failed(Call.STATUS, transient=True, retry_after_s=900.0), 0, 120.0),  # ... capped
        (failed(Call.RESULT, not_ready=True, transient=True), 3, 0.8),  # no jitter
    ],
)  # fmt: skip
def test_retry_delays(seen: CallFailed, failures: int, delay_s: float) -> None:
    status = {Call.SUBMIT: S.ADMITTED, Call.STATUS: S.RUNNING, Call.RESULT: S.COLLECTING}[seen.call]
    decision = decide(seen, record(status, call_failures=failures), 3, Limits(), rand=0.5)
    assert isinstance(decision, RetryLater) and decision.delay_s == pytest.approx(delay_s)


def test_a_crash_backs_off_longer_each_time() -> None:
    delays = [decide(StepCrashed("x"), record(S.RUNNING, step_errors=n), 3, Limits(), 0.5) for n in range(4)]
    assert [d.delay_s for d in delays if isinstance(d, RetryLater)] == [1.0, 2.0, 4.0, 8.0]
