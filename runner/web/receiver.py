"""`POST /fal/webhook`: fal says a request ended; its job is collected now, with no status call.

A delivery is checked to be fal's (`runner.fal.webhooks`), then only names a request: the job moves as a
poll that saw COMPLETED would move it, and its collect step (due now, run by a worker) fetches the result
and files from fal, so a payload's content is never used. It answers at once (one move); a second delivery of
the same request is a no-op (the job moved on), and one of a request this ledger does not hold is ignored
(200, so fal stops delivering it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from jobs.errors import WebhookRejected
from jobs.lifecycle import JobUpdate, Move
from jobs.status import JobStatus
from runner.ledger.timers import Timer
from runner.steps.context import Context
from runner.steps.moves import move

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """What a verified delivery led to, as the receiver answers it."""

    outcome: str
    job_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, **({"job_id": self.job_id} if self.job_id else {})}


#: A delivery for a request no job holds (yet) is kept this long, for a submit whose answer is still being stored.
EARLY_WEBHOOK_S = 900
#: A move refused because a worker moved the job meanwhile is tried again on the job as it then is.
_TRIES = 3


def take_delivery(ctx: Context, request_id: str, body: bytes) -> Delivery:
    """Move the job holding `request_id` to be collected now, if fal still has its request."""
    try:
        said = json.loads(body)
    except ValueError:
        raise WebhookRejected("the delivery's body is not JSON", 400) from None
    if not isinstance(said, dict) or said.get("request_id") != request_id:
        raise WebhookRejected("the delivery's body names another request than its signed headers", 400)
    delivered = _deliver(ctx, request_id)
    ctx.metrics.count("webhooks", {"outcome": delivered.outcome})
    return delivered


def _deliver(ctx: Context, request_id: str) -> Delivery:
    found = ctx.ledger.job_for_request(request_id)
    if found is None:  # not ours, or its submit's answer is not stored yet: then its step comes due when it is
        log.info("webhook for request %s, which no batch here holds (yet): kept %d s", request_id, EARLY_WEBHOOK_S)
        ctx.ledger.redis.set(ctx.ledger.keys.early_webhook(request_id), "1", ex=EARLY_WEBHOOK_S)
        return Delivery("unknown_request")
    batch_id, job_id = found
    for _ in range(_TRIES):
        batch, record = ctx.ledger.batch(batch_id), ctx.ledger.record(batch_id, job_id)
        if batch is None or record is None or record.request_id != request_id \
                or record.status not in (JobStatus.QUEUED, JobStatus.RUNNING):  # fmt: skip
            return Delivery("already_handled", job_id)
        if batch.state == "cancelled":  # its step cancels it at fal, or collects it if fal had finished it
            ctx.timers.schedule([Timer.step(batch_id, job_id)], ctx.clock())
            ctx.timers.nudge()
            return Delivery("step_now", job_id)
        # Not seen running: when it started is not known (no run time is made up for it).
        update = JobUpdate(completed_at=ctx.clock(), queue_position=None)
        if move(ctx, batch, record, Move.COMPLETE, update).applied is not None:
            ctx.timers.nudge()  # a dispatcher sends its collect step now, not at its next tick
            return Delivery("collect_now", job_id)
    return Delivery("already_handled", job_id)
