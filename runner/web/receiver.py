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


def take_delivery(ctx: Context, request_id: str, body: bytes) -> Delivery:
    """Move the job holding `request_id` to be collected now, if fal still has its request."""
    try:
        said = json.loads(body)
    except ValueError:
        raise WebhookRejected("the delivery's body is not JSON", 400) from None
    if not isinstance(said, dict) or said.get("request_id") != request_id:
        raise WebhookRejected("the delivery's body names another request than its signed headers", 400)
    found = ctx.ledger.job_for_request(request_id)
    metrics = ctx.metrics
    if found is None:
        log.info("webhook for request %s, which no batch here holds: ignored", request_id)
        metrics.count("webhooks", {"outcome": "unknown_request"})
        return Delivery("unknown_request")
    batch_id, job_id = found
    batch, record = ctx.ledger.batch(batch_id), ctx.ledger.record(batch_id, job_id)
    if batch is None or record is None or record.request_id != request_id \
            or record.status not in (JobStatus.QUEUED, JobStatus.RUNNING):  # fmt: skip
        metrics.count("webhooks", {"outcome": "already_handled"})
        return Delivery("already_handled", job_id)
    now = ctx.clock()
    # Never seen running: it started at the latest after its last look in the queue (so its run time errs long).
    started_at = record.started_at or record.last_queued_at or record.submitted_at or now
    update = JobUpdate(completed_at=now, queue_position=None, started_at=started_at)
    finished = "finished" if batch.state == "cancelled" else ""  # ran to its end although cancelled
    moved = move(ctx, batch, record, Move.COMPLETE, update, tally=finished)
    outcome = "collect_now" if moved.applied is not None else "already_handled"  # a poll got there first
    metrics.count("webhooks", {"outcome": outcome})
    return Delivery(outcome, job_id)
