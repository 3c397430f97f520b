"""The reconcile step: a lost submit looked for in fal's request history, adopted if found, sent again once absent.

What a look leads to is `jobs.reconcile.settle`'s. Before a proof of absence
sends a job again, the history is checked on a request of the batch whose
input is known (`_lists_inputs_as_sent`): a history that lists inputs
otherwise than they were sent (rewritten, say) could hide the lost one, so it
proves nothing and the job is left to a person instead.
"""

from __future__ import annotations

import logging

from jobs.decisions import UNCONFIRMED_ADVICE, Call, GiveUp
from jobs.errors import QueueAPIError
from jobs.lifecycle import JobUpdate, Move, refunded
from jobs.reconcile import Absent, Adopt, LookAgain, Unsettled, absent_after, settle, start_timeout_s
from jobs.record import Attempt, JobRecord, Reconciled
from jobs.status import JobStatus
from runner.fal.history import HistoryClient
from runner.fal.queue_api import Submission
from runner.ledger.batch_info import BatchInfo
from runner.steps.context import Context
from runner.steps.moves import Outcome, call_failed, decide_and_apply, give_up, move

log = logging.getLogger(__name__)
#: Requests of the batch whose input is known, tried at most to check how the history lists inputs.
_KNOWN_TRIED = 3


def reconcile_job(ctx: Context, batch: BatchInfo, record: JobRecord, mark: str) -> Outcome:
    """Look for the job's lost submit in fal's request history once."""
    history = ctx.history_client(batch)
    if history is None or record.sent_at is None or record.sent_digest is None:
        message = "its submit's answer was lost, and there is no request history to look for it in"
        return give_up(ctx, batch, record, GiveUp("submit_unconfirmed", f"{message}; {UNCONFIRMED_ADVICE}"))
    policy, sent_at = ctx.settings.reconcile, record.sent_at
    reached_by = record.reached_by or sent_at + ctx.queue_client(batch).submit_timeout_s
    deadline = absent_after(reached_by, record.sent_start_timeout_s or start_timeout_s(batch.priority,
                            batch.start_timeout_s), ctx.ledger.longest_run_s(batch.id), policy)  # fmt: skip
    looked_at = ctx.clock()  # what a look proves, it proves as of when it began

    def taken(request_id: str) -> bool:  # by any job: another one, or an earlier attempt of this one
        return ctx.ledger.job_for_request(request_id) is not None

    try:
        search = history.find(record.job.endpoint, record.sent_digest, sent_at, deadline, taken, policy)
        verdict = settle(search.found.request_id if search.found else None, search.complete, search.blind,
                         looked_at, sent_at, deadline, record.call_failures, policy)  # fmt: skip
        if isinstance(verdict, Absent):
            verdict = _checked(_lists_inputs_as_sent(ctx, batch, history))
    except QueueAPIError as exc:
        return decide_and_apply(ctx, batch, record, call_failed(Call.HISTORY, exc))
    if isinstance(verdict, Adopt):
        return adopt(ctx, batch, record, verdict.request_id)
    if isinstance(verdict, LookAgain):  # a look that proved nothing past the deadline counts against a budget
        look = JobUpdate(call_failures=record.call_failures + 1 if verdict.inconclusive else 0)
        return move(ctx, batch, record, Move.RETRY, look, verdict.delay_s)
    if isinstance(verdict, Absent):
        return _absent(ctx, batch, record, ctx.clock())
    message = f"its submit's answer was lost, and {verdict.message}; {UNCONFIRMED_ADVICE}"
    return give_up(ctx, batch, record, GiveUp("submit_unconfirmed", message))


def _checked(lists_as_sent: bool | None) -> Absent | Unsettled:
    """A proof of absence, unless the history lists a known input otherwise than it was sent.

    With no request of the batch to check it on, fal's documented word (items carry the input that was
    sent) stands.
    """
    if lists_as_sent is False:
        return Unsettled("fal's request history lists the inputs of this batch otherwise than they were sent,"
                         " so it cannot tell")  # fmt: skip
    return Absent()


def _lists_inputs_as_sent(ctx: Context, batch: BatchInfo, history: HistoryClient) -> bool | None:
    """Whether the history lists a known request of the batch with the digest of the input it was sent.

    None when no request of the batch whose input is known could be found in it.
    """
    skew_s, tried = ctx.settings.reconcile.clock_skew_s, 0
    for known in ctx.ledger.records_with(batch.id, [JobStatus.SUCCEEDED], latest=20):
        if not (known.request_id and known.sent_digest and known.sent_at):
            continue
        listed = history.digest_of(known.job.endpoint, known.request_id, known.sent_at - skew_s)
        if listed is not None:
            return listed == known.sent_digest
        tried += 1
        if tried == _KNOWN_TRIED:
            break
    return None


def adopt(ctx: Context, batch: BatchInfo, record: JobRecord, request_id: str,
          urls: Submission | None = None) -> Outcome:  # fmt: skip
    """The lost submit is fal's `request_id`: the job follows it (polled now), nothing is sent again.

    `urls`: those fal's answer gave, when it came after all; else fal's form, from the endpoint and the id.
    """
    urls = urls or ctx.queue_client(batch).follow(record.job.endpoint, request_id)
    found = Reconciled(record.attempts, "adopted", request_id, record.sent_at, ctx.clock())
    update = JobUpdate(
        request_id=request_id, status_url=urls.status_url, response_url=urls.response_url, cancel_url=urls.cancel_url,
        submitted_at=record.sent_at, queue_position=None, started_at=None, completed_at=None, last_queued_at=None,
        reconciled=(*record.reconciled, found), last_log=f"its lost submit is fal request {request_id}; following it",
    )  # fmt: skip
    done = move(ctx, batch, record, Move.ADOPT, update)
    if done.applied is not None:
        log.info("job %s: its lost submit is fal request %s; following it", record.job.id, request_id)
    return done


def _absent(ctx: Context, batch: BatchInfo, record: JobRecord, now: float) -> Outcome:
    """fal never had the lost submit: the job goes back in line for a new attempt (none in a cancelled batch)."""
    proven = Reconciled(record.attempts, "absent", None, record.sent_at, now)
    why = "its submit's answer was lost, and fal's request history shows fal never had it"
    if batch.state == "cancelled":
        update = JobUpdate(error_type="cancelled", error_message=f"cancelled by the user; {why}", finished_at=now,
                           reconciled=(*record.reconciled, proven))  # fmt: skip
        update = refunded(update, record)
        return move(ctx, batch, record, Move.CANCEL, update, tally="never_sent")
    if record.attempts >= batch.max_attempts:
        update = JobUpdate(error_type="submit_lost", error_message=f"{why}, {record.attempts} time(s): out of attempts;"
                           " nothing ran, so `wan-batch retry` is safe", finished_at=now,
                           reconciled=(*record.reconciled, proven))  # fmt: skip
        update = refunded(update, record)
        return move(ctx, batch, record, Move.FAIL, update)
    ended = Attempt(record.attempts, None, "submit_lost", why, record.sent_at, now)
    update = JobUpdate(history=(*record.history, ended), reconciled=(*record.reconciled, proven),
                       last_log=f"{why}; submitting it again")  # fmt: skip
    done = move(ctx, batch, record, Move.ABSENT, update)  # refused in a batch cancelled meanwhile: looked at again
    if done.applied is not None:
        log.info("job %s: %s; submitting it again", record.job.id, why)
    return done
