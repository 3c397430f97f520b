"""The `wan-batch` command line: one click group; its commands live in the modules beside this one."""

from __future__ import annotations

from typing import Any

import click
import redis

from jobs.errors import UsageError
from runner.cli import batch, operate, schedule, sim


class _Group(click.Group):
    """Turns the project's usage errors into exit 2, and an unreachable Redis into a message."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise click.UsageError(str(exc)) from None
        except redis.ConnectionError as exc:  # the URL may hold a password: not shown
            raise click.ClickException(f"cannot reach Redis: {type(exc).__name__}; is it running?") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wan-batch")
def main() -> None:
    """Run batches of image-to-image jobs on fal's queue API."""


for _command in (
    batch.validate, batch.run, batch.report, batch.worker, sim.sim,
    operate.submit, operate.batches, operate.status, operate.watch,
    operate.cancel, operate.retry, operate.resume, operate.purge, operate.beat, schedule.schedule,
):  # fmt: skip
    main.add_command(_command)
