"""Every error the project raises derives from `WanBatchError`."""

from __future__ import annotations

from typing import Any

from jobs.diagnostics import Diagnostic


class WanBatchError(Exception):
    """Base class of the project's errors; its message is safe to show a user."""


class UsageError(WanBatchError):
    """The command cannot run as asked (a missing credential, a clashing batch id); the CLI exits 2."""


class FolderInUseError(UsageError):
    """Another embedded `wan-batch run` holds the output folder."""


class EmbeddedRedisError(WanBatchError):
    """The private redis-server of `wan-batch run` could not be found or started."""


class EmbeddedWorkerError(WanBatchError):
    """The in-process Celery worker of `wan-batch run` did not start."""


class LocalImageError(WanBatchError):
    """A local image that cannot be sent: missing, not an image, or too large."""


class StorageError(WanBatchError):
    """A call to fal storage (a token, an upload) that failed; `transient` when the same call may succeed later."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class UploadExpiredError(LocalImageError):
    """A local image whose upload to fal storage expired before its job was sent."""


class ScheduleError(WanBatchError):
    """A schedule that cannot be: the message names the option (--cron, --at, --tz) and what is wrong."""


class WebhookRejected(WanBatchError):
    """A delivery to the webhook receiver that is not fal's, or not fresh; `status_code` is the answer."""

    def __init__(self, message: str, status_code: int = 401) -> None:
        super().__init__(message)
        self.status_code = status_code


class IllegalMoveError(WanBatchError):
    """A move of a job that `jobs.lifecycle.TRANSITIONS` does not allow from its status: a bug, never a user's."""


class ManifestError(WanBatchError):
    """A manifest that cannot run; carries every located problem found."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))


class QueueAPIError(WanBatchError):
    """A call to the fal queue failed.

    `retryable` says whether repeating the same call may succeed;
    `job_retryable` is fal's `X-Fal-Retryable` hint (whether resubmitting the
    job may succeed), None when fal gave none. The message never holds the
    credential.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_type: str | None = None,
        detail: Any = None,
        retry_after_s: float | None = None,
        fal_request_id: str | None = None,
        job_retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.fal_request_id = fal_request_id
        self.job_retryable = job_retryable


class TransientQueueError(QueueAPIError):
    """A failure a backoff cures: transport errors, 408/409/429, a proxy's 502/503/504."""

    retryable = True


class PermanentQueueError(QueueAPIError):
    """A failure that repeating the same call will not cure (a model error, 404, 422...)."""


class AuthError(PermanentQueueError):
    """The credential was refused (401/403)."""


class SubmitUnconfirmedError(QueueAPIError):
    """A submit whose answer was lost after the request was sent.

    fal may have queued it; fal has no idempotency key, so submitting again
    may run and bill the job twice. Not retried automatically.
    """


class ResultNotReadyError(QueueAPIError):
    """The result was asked for before the request completed; poll its status first."""


class DownloadError(WanBatchError):
    """An output file that could not be fetched, or is not the image it claims to be."""

    def __init__(self, message: str, *, retryable: bool, status_code: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code


class HistoryQueryError(WanBatchError):
    """A query the simulator's request history refuses: `status` 422 (detail: a list, FastAPI style) or 400."""

    def __init__(self, status: int, detail: str | list[dict[str, Any]]) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


class TooDeepError(ValueError):
    """Manifest JSON that nests deeper than can be parsed; `key` is the row's field it sits in, when known."""

    def __init__(self, message: str, key: str | None) -> None:
        super().__init__(message)
        self.key = key
