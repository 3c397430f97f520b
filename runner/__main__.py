"""`python -m runner` and the `wan-batch` console script: a Ctrl-C while the command line loads (it imports
Celery, pydantic and more) is a clean exit 130, not a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from runner.cli import main as cli
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        sys.exit(130)
    cli()


if __name__ == "__main__":
    main()
