"""The live progress bar of a batch, and its closing summary."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from jobs.record import JobRecord
from jobs.report import brief
from jobs.status import JobStatus

S = JobStatus
MB = 1e6


class ProgressBar:
    """done / failed / in flight / queued at fal / waiting / looked up, with an ETA; silent when not `enabled`."""

    def __init__(self, total: int, enabled: bool, console: Console | None = None, label: str = "jobs") -> None:
        self._enabled = enabled
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task(label, total=total, detail="", count=f"0/{total}")
        self._uploads: TaskID | None = None
        self._total = total

    def __enter__(self) -> ProgressBar:
        if self._enabled:
            self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._enabled:
            self._progress.stop()

    def note(self, message: str) -> None:
        """Print `message` above the bar; printed even when the bar is off (a hint, not progress)."""
        self._progress.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def advance_to(self, done: int) -> None:
        """Show `done` of the total, with no detail (a plain count, e.g. of URLs checked)."""
        if self._enabled:
            self._progress.update(self._task, completed=done, count=f"{done}/{self._total}")

    def uploads(self, sent: int, total: int) -> None:
        """Show `sent` of `total` bytes of local images uploaded (a line of its own, above the jobs)."""
        if not self._enabled:
            return
        count = f"{sent / MB:.1f}/{total / MB:.1f} MB"
        if self._uploads is None:
            self._uploads = self._progress.add_task("uploads", total=total, detail="", count=count)
        self._progress.update(self._uploads, completed=sent, total=total, count=count)

    def update(self, counts: dict[JobStatus, int], in_flight: int) -> None:
        if not self._enabled:
            return
        done = counts[S.SUCCEEDED] + counts[S.FAILED] + counts[S.CANCELLED]
        detail = (
            f"[green]{counts[S.SUCCEEDED]} done[/] [red]{counts[S.FAILED]} failed[/] "
            f"{in_flight} in flight ({counts[S.QUEUED]} queued at fal, {counts[S.RUNNING]} running) "
            f"{counts[S.WAITING]} waiting"
            + (f" {counts[S.UNCONFIRMED]} lost submit(s) looked up at fal" if counts[S.UNCONFIRMED] else "")
        )
        total = sum(counts.values())
        self._progress.update(self._task, completed=done, total=total, detail=detail, count=f"{done}/{total}")


def failure_lines(records: Iterable[JobRecord], per_type: int = 3) -> list[str]:
    """Failed jobs grouped by error type: a count, then a few job ids with their message."""
    groups: dict[str, list[JobRecord]] = {}
    for record in records:
        if record.status is S.FAILED:
            groups.setdefault(record.error_type or "unknown", []).append(record)
    lines = []
    for error_type, failed in sorted(groups.items(), key=lambda item: -len(item[1])):
        lines.append(f"  {error_type}: {len(failed)} job(s)")
        for record in failed[:per_type]:
            lines.append(f"    {record.job.id} (row {record.job.row}): {brief(record.error_message or '', 200)}")
        if len(failed) > per_type:
            lines.append(f"    ... and {len(failed) - per_type} more (see report.csv)")
    return lines
