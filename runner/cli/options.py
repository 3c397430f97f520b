"""Options several commands share, defined once so that their help, defaults and checks agree."""

from __future__ import annotations

import click

max_in_flight = click.option("--max-in-flight", type=click.IntRange(min=1), default=10, show_default=True,
                             help="Jobs submitted and not yet collected, across all workers.")  # fmt: skip
max_attempts = click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True,
                            help="Submits per job when attempts fail in ways worth retrying.")  # fmt: skip
max_image_mb = click.option("--max-image-mb", type=click.FloatRange(min=0, min_open=True), default=10.0,
                            show_default=True, help="Largest local image or data URI a job may send.")  # fmt: skip
allow_endpoint = click.option("--allow-endpoint", "allowed_endpoints", metavar="ID", multiple=True,
                              help="An endpoint id close to a known one that is meant as written, not a typo "
                                   "(repeatable).")  # fmt: skip
max_jobs = click.option("--max-jobs", type=click.IntRange(min=1), default=100_000, show_default=True,
                        help="Refuse a manifest that would make more jobs (rows times its matrix), before making any.")
notify = click.option("--notify", metavar="URL",
                      help="When the batch ends, POST its summary as JSON to this http(s) URL (only its host is ever "
                           "shown: its path may hold a token).")  # fmt: skip
loglevel = click.option("--loglevel", default="INFO", show_default=True,
                        help="How much it logs: DEBUG, INFO, WARNING or ERROR.")  # fmt: skip


def require_redis(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
    """`--redis`, or REDIS_URL: required, but not shown as such where the environment may give it."""
    if not value:
        raise click.UsageError("give the shared Redis: --redis URL, or set REDIS_URL")
    return value
