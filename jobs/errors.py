"""Every error the project raises derives from `WanBatchError`."""

from __future__ import annotations

from jobs.diagnostics import Diagnostic


class WanBatchError(Exception):
    """Base class of the project's errors; its message is safe to show a user."""


class ManifestError(WanBatchError):
    """A manifest that cannot run; carries every located problem found."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))
