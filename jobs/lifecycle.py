"""A job's lifecycle in one place: the moves between statuses with their guards.

Pure data and functions. `TRANSITIONS` is the table of moves; `plan` checks
a move against it and says exactly what changes (the ledger applies a plan
atomically, `runner.ledger.store.Ledger.apply`). What each outcome of a step
leads to is `jobs.decisions.decide`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any, Final

from jobs.errors import IllegalMoveError
from jobs.record import Attempt, JobRecord, OutputFile, Reconciled
from jobs.status import FINAL, JobStatus

S = JobStatus


class Move(str, Enum):
    """A change of a job; each has one row in `TRANSITIONS`."""

    #: A manifest row is recorded, or recorded again with a new input: it waits for a slot.
    RECORD = "record"
    #: A slot of the in-flight window is free: the job takes it and its submit is due.
    ADMIT = "admit"
    #: The submit call is about to be made: from now on the request may reach fal.
    SEND = "send"
    #: The submit call failed before a byte left: nothing reached fal; it is tried again.
    UNSENT = "unsent"
    #: fal answered the submit: its request_id is stored and the job is polled.
    ACCEPT = "accept"
    #: The submit's answer was lost after the request may have left: fal's request history is searched for it.
    UNCONFIRM = "unconfirm"
    #: The lost submit was found in fal's request history: the job follows that request.
    ADOPT = "adopt"
    #: The lost submit is proven never to have reached fal: the job goes back in line for a new attempt.
    ABSENT = "absent"
    #: fal says IN_QUEUE (again, when fal requeues a request it retries on its side).
    SEEN_QUEUED = "seen_queued"
    #: fal says IN_PROGRESS.
    SEEN_RUNNING = "seen_running"
    #: fal says COMPLETED: the result and every output file are fetched at once.
    COMPLETE = "complete"
    #: The same call or step again, later; only the counters of failures change.
    RETRY = "retry"
    #: The attempt failed in a way a new one may cure: the job is submitted again, keeping its slot.
    RESUBMIT = "resubmit"
    #: Every output file is saved.
    SUCCEED = "succeed"
    #: Given up; `error_type` says why.
    FAIL = "fail"
    #: Stopped by the user.
    CANCEL = "cancel"
    #: fal answered the submit with an error (a refused input, an unknown app, a refused credential): nothing runs
    #: there and nothing is billed; the job fails.
    REFUSED = "refused"
    #: The user retries a failed or cancelled job: it goes back in line.
    REQUEUE = "requeue"
    #: The user retries a cancelled job whose request fal may have finished anyway: that request is polled
    #: (and collected if it ran), and the job is submitted again only if fal did cancel it. It keeps its
    #: error_type `cancelled` until then, which is how `jobs.decisions.decide` knows a 499 was the user's cancel.
    RECHECK = "recheck"


class Slot(str, Enum):
    """What a move does to the job's slot in the batch's in-flight window."""

    #: Takes a slot (only when one is free).
    TAKE = "take"
    #: Neither takes nor frees one: the job holds one before and after, or none before and after.
    KEEP = "keep"
    #: Frees the job's slot; the next waiting job may take it.
    RELEASE = "release"
    #: Takes a slot even when the window is full: fal already has the job's request, which must be followed.
    REJOIN = "rejoin"


class Guard(str, Enum):
    """What must still hold when a move is applied, checked atomically with it."""

    #: The job is exactly as the mover read it (its revision), so a late step never undoes a newer one.
    AS_SEEN = "as_seen"
    #: The batch admits jobs (it is open) and its window has a free slot.
    ROOM = "room"
    #: The row is new, or its input changed and no request of it can be at fal.
    NEW_INPUT = "new_input"


class Charge(str, Enum):
    """What a move does to the estimated cost charged to the batch's budget (`jobs.pricing`)."""

    NONE = "none"
    #: The attempt about to be sent is charged (its cost is the update's `sent_cost_nusd`); the move is refused
    #: when that would pass the batch's cost cap, atomically with it, however many workers send at once.
    ATTEMPT = "attempt"
    #: The latest attempt never reached fal, or fal refused it: its charge is given back.
    REFUND = "refund"


class Step(str, Enum):
    """The step due for a job in a status: what a worker does next for it."""

    SUBMIT = "submit"
    #: Look for a lost submit in fal's request history.
    RECONCILE = "reconcile"
    POLL = "poll"
    COLLECT = "collect"


@dataclass(frozen=True)
class Transition:
    sources: frozenset[JobStatus]
    #: None: the status stays what it was.
    target: JobStatus | None
    slot: Slot
    guard: Guard
    #: The job's step got somewhere: the counts of failures in a row start again from 0.
    progress: bool = True
    charge: Charge = Charge.NONE


#: fal has the request and may be running it: it is polled, and cancelled there when given up.
AT_FAL: Final = frozenset({S.QUEUED, S.RUNNING})

TRANSITIONS: Final[dict[Move, Transition]] = {
    Move.RECORD: Transition(frozenset({S.WAITING, *FINAL}), S.WAITING, Slot.KEEP, Guard.NEW_INPUT),
    Move.ADMIT: Transition(frozenset({S.WAITING}), S.ADMITTED, Slot.TAKE, Guard.ROOM),
    # Sending is not yet progress: a submit that keeps failing before it leaves must use up its budget.
    Move.SEND: Transition(frozenset({S.ADMITTED}), S.SUBMITTING, Slot.KEEP, Guard.AS_SEEN, progress=False,
                          charge=Charge.ATTEMPT),
    Move.UNSENT: Transition(frozenset({S.SUBMITTING}), S.ADMITTED, Slot.KEEP, Guard.AS_SEEN, progress=False,
                            charge=Charge.REFUND),
    Move.ACCEPT: Transition(frozenset({S.SUBMITTING}), S.QUEUED, Slot.KEEP, Guard.AS_SEEN),
    # While it is looked for, the job leaves its slot to the next one: proving a request absent takes a while.
    Move.UNCONFIRM: Transition(frozenset({S.SUBMITTING}), S.UNCONFIRMED, Slot.RELEASE, Guard.AS_SEEN),
    Move.ADOPT: Transition(frozenset({S.UNCONFIRMED}), S.QUEUED, Slot.REJOIN, Guard.AS_SEEN),
    Move.ABSENT: Transition(frozenset({S.UNCONFIRMED}), S.WAITING, Slot.KEEP, Guard.AS_SEEN, charge=Charge.REFUND),
    Move.SEEN_QUEUED: Transition(AT_FAL, S.QUEUED, Slot.KEEP, Guard.AS_SEEN),
    Move.SEEN_RUNNING: Transition(AT_FAL, S.RUNNING, Slot.KEEP, Guard.AS_SEEN),
    Move.COMPLETE: Transition(AT_FAL, S.COLLECTING, Slot.KEEP, Guard.AS_SEEN),
    Move.RETRY: Transition(
        frozenset({S.ADMITTED, S.UNCONFIRMED, *AT_FAL, S.COLLECTING}), None, Slot.KEEP, Guard.AS_SEEN, progress=False
    ),
    Move.RESUBMIT: Transition(frozenset({*AT_FAL, S.COLLECTING}), S.ADMITTED, Slot.KEEP, Guard.AS_SEEN),
    Move.SUCCEED: Transition(frozenset({S.COLLECTING}), S.SUCCEEDED, Slot.RELEASE, Guard.AS_SEEN),
    Move.FAIL: Transition(frozenset(s for s in JobStatus if not s.is_final), S.FAILED, Slot.RELEASE, Guard.AS_SEEN),
    Move.REFUSED: Transition(frozenset({S.SUBMITTING}), S.FAILED, Slot.RELEASE, Guard.AS_SEEN, charge=Charge.REFUND),
    # A job being collected already ran (its files are paid for): it is left to finish. One being submitted
    # is cancelled once its answer (or the history) tells whether fal has it; an unconfirmed one once proven
    # absent; one at fal once fal said it cancelled it.
    Move.CANCEL: Transition(
        frozenset({S.WAITING, S.ADMITTED, S.UNCONFIRMED, *AT_FAL}), S.CANCELLED, Slot.RELEASE, Guard.AS_SEEN
    ),
    Move.REQUEUE: Transition(frozenset({S.FAILED, S.CANCELLED}), S.WAITING, Slot.KEEP, Guard.AS_SEEN),
    Move.RECHECK: Transition(frozenset({S.CANCELLED}), S.QUEUED, Slot.REJOIN, Guard.AS_SEEN),
}

#: The step due for a job in each status; waiting and final jobs have none.
STEP_OF: Final[dict[JobStatus, Step]] = {
    S.ADMITTED: Step.SUBMIT,
    # Found so by a step, the submit's worker died mid-call: the submit step decides what became of it.
    S.SUBMITTING: Step.SUBMIT,
    S.UNCONFIRMED: Step.RECONCILE,
    S.QUEUED: Step.POLL,
    S.RUNNING: Step.POLL,
    S.COLLECTING: Step.COLLECT,
}


class Keep(Enum):
    """The value of a `JobUpdate` field that the move leaves as it is."""

    KEEP = "keep"


KEEP: Final = Keep.KEEP


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """The fields a move sets, typed; a field left at KEEP is not touched, None clears it."""

    attempts: int | Keep = KEEP
    request_id: str | Keep | None = KEEP
    status_url: str | Keep | None = KEEP
    response_url: str | Keep | None = KEEP
    cancel_url: str | Keep | None = KEEP
    queued_at: float | Keep | None = KEEP
    submitted_at: float | Keep | None = KEEP
    started_at: float | Keep | None = KEEP
    completed_at: float | Keep | None = KEEP
    finished_at: float | Keep | None = KEEP
    inference_s: float | Keep | None = KEEP
    queue_position: int | Keep | None = KEEP
    last_queued_at: float | Keep | None = KEEP
    polls: int | Keep = KEEP
    last_log: str | Keep | None = KEEP
    outputs: tuple[OutputFile, ...] | Keep = KEEP
    error_type: str | Keep | None = KEEP
    error_message: str | Keep | None = KEEP
    history: tuple[Attempt, ...] | Keep = KEEP
    sent_at: float | Keep | None = KEEP
    sent_digest: str | Keep | None = KEEP
    sent_start_timeout_s: float | Keep | None = KEEP
    sent_webhook: bool | Keep = KEEP
    sent_cost_nusd: int | Keep = KEEP
    charged_nusd: int | Keep = KEEP
    reached_by: float | Keep | None = KEEP
    reconciled: tuple[Reconciled, ...] | Keep = KEEP
    call_failures: int | Keep = KEEP
    step_errors: int | Keep = KEEP

    def changes(self) -> dict[str, Any]:
        """The fields it sets, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not KEEP}


@dataclass(frozen=True)
class Plan:
    """What applying a move to a job changes, for the ledger to do atomically."""

    move: Move
    source: JobStatus
    target: JobStatus
    slot: Slot
    guard: Guard
    #: The revision of the job the move was planned from: it is applied only to that one.
    revision: int
    #: The job as it is after the move.
    record: JobRecord
    #: The stored fields the move changes, as JSON-ready values (status and revision apart).
    fields: dict[str, Any]
    #: What the move adds to the estimated cost charged to the batch (nano-dollars; negative: given back).
    charge_nusd: int = 0

    @property
    def step(self) -> Step | None:
        """The step due after the move; None for a waiting or final job."""
        return STEP_OF.get(self.target)


def allowed(move: Move, status: JobStatus) -> bool:
    return status in TRANSITIONS[move].sources


def plan(record: JobRecord, move: Move, update: JobUpdate, now: float) -> Plan:
    """The plan of `move` on `record` with `update`, stamped `now`; raises IllegalMoveError when not allowed.

    A move that is progress (most but RETRY, SEND, UNSENT) starts the counts of failures in a row
    again from 0, unless `update` sets them. A move that charges (`Charge`) sets `charged_nusd`; any other
    move may change it through `update` (`refunded`), and the plan's `charge_nusd` is what it adds.
    """
    row = TRANSITIONS[move]
    if record.status not in row.sources:
        raise IllegalMoveError(f"{move.value} is not allowed from {record.status.value} (job {record.job.id})")
    changes = update.changes()
    if row.progress:
        changes = {"call_failures": 0, "step_errors": 0, **changes}
    if row.charge is Charge.ATTEMPT:
        changes.setdefault("sent_cost_nusd", 0)
        changes["charged_nusd"] = record.charged_nusd + changes["sent_cost_nusd"]
    elif row.charge is Charge.REFUND:
        changes.update(charged_nusd=record.charged_nusd - record.sent_cost_nusd, sent_cost_nusd=0)
    changes["updated_at"] = now
    target = row.target or record.status
    after = replace(record, status=target, revision=record.revision + 1, **changes)
    stored = after.to_dict()
    return Plan(move, record.status, target, row.slot, row.guard, record.revision, after,
                {name: stored[name] for name in changes}, after.charged_nusd - record.charged_nusd)


def refunded(update: JobUpdate, record: JobRecord) -> JobUpdate:
    """`update`, also giving back the charge of the job's latest submit: fal never had it, or refused it."""
    return replace(update, charged_nusd=record.charged_nusd - record.sent_cost_nusd, sent_cost_nusd=0)
