"""How steps become Celery messages: the queue, the task names, and sending a step's follow-ups."""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery

from runner.steps.pipeline import FollowUp

QUEUE = "wan-batch"
TASKS = {"submit": "wan_batch.submit", "poll": "wan_batch.poll", "collect": "wan_batch.collect",
         "end": "wan_batch.batch_end"}  # fmt: skip


def send_steps(app: Celery, batch_id: str, follow_ups: Iterable[FollowUp]) -> None:
    """Send each follow-up as its task, after its delay."""
    for follow in follow_ups:
        app.send_task(
            TASKS[follow.task],
            args=[batch_id, follow.job_id],
            kwargs={"token": follow.token, "tries": follow.tries},
            countdown=follow.delay_s or None,
            queue=QUEUE,
        )
