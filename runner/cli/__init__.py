"""The `wan-batch` command line: one click group; its commands live in the modules beside this one."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
import redis

from jobs.errors import UsageError, WanBatchError
from runner.batches.providers import shown_url
from runner.cli import batch, operate, schedule, sim, web
from runner.settings import credential_from_env


class _Group(click.Group):
    """Turns the project's usage errors into exit 2, an unreachable Redis into a message, Ctrl-C into 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise click.UsageError(str(exc)) from None
        except redis.ConnectionError as exc:
            where = _redis_url_of(sys.argv[1:])
            raise click.ClickException(f"cannot reach Redis at {where}: {type(exc).__name__}; is it running?") from None
        except KeyboardInterrupt:  # a command that handles signals itself never gets here
            click.echo("\ninterrupted", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except OSError as exc:  # the file system or the network said no: one line, naming what
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or type(exc).__name__}") from None
        except WanBatchError as exc:  # a known failure (an embedded Redis that cannot start, say)
            raise click.ClickException(str(exc)) from None
        except Exception as exc:  # a bug of wan-batch: one line, and 3, which no command uses for anything else
            if os.environ.get("WAN_BATCH_TRACEBACK"):
                raise
            click.echo(f"internal error: {type(exc).__name__}: {_scrubbed(exc)}; please report it"
                       " (WAN_BATCH_TRACEBACK=1 shows where)", err=True)  # fmt: skip
            sys.exit(3)


def _scrubbed(exc: Exception) -> str:
    """The first line of `exc`'s message, without this environment's credentials in it."""
    reason = next(iter(str(exc).splitlines()), "")
    for secret in filter(None, (credential_from_env("Key"), credential_from_env("Bearer"))):
        reason = reason.replace(secret, "[redacted]")
    return reason[:200]


def _redis_url_of(argv: list[str]) -> str:
    """The Redis a command was given (`--redis URL`, else REDIS_URL), without a password."""
    for n, arg in enumerate(argv):
        if arg == "--redis" and n + 1 < len(argv):
            return shown_url(argv[n + 1])
        if arg.startswith("--redis="):
            return shown_url(arg.removeprefix("--redis="))
    from_env = os.environ.get("REDIS_URL", "").strip()
    return shown_url(from_env) if from_env else "the one in the output folder"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wan-batch")
def main() -> None:
    """Run batches of image-to-image jobs on fal's queue API."""


for _command in (
    batch.validate, batch.run, batch.report, batch.worker, sim.sim,
    operate.submit, operate.batches, operate.status, operate.watch,
    operate.cancel, operate.retry, operate.resume, operate.export, operate.purge, operate.beat,
    schedule.schedule, web.serve,
):  # fmt: skip
    main.add_command(_command)
