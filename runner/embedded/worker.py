"""A Celery worker inside the `wan-batch run` process: a thread pool on its own thread."""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery
from celery.worker import WorkController
from celery.worker import state as worker_state

from jobs.errors import EmbeddedWorkerError

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 60.0


class _Controller(WorkController):  # type: ignore[misc]
    """A WorkController that tells when its consumer is ready."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ready = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer: Any) -> None:
        self.ready.set()


class EmbeddedWorker:
    """Runs `app`'s tasks on `concurrency` threads until `stop()`; a context manager."""

    def __init__(self, app: Celery, concurrency: int) -> None:
        self._app = app
        self._concurrency = concurrency
        self._thread: threading.Thread | None = None
        self._controller: _Controller | None = None

    def __enter__(self) -> EmbeddedWorker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start consuming; returns once the worker takes tasks. Raises EmbeddedWorkerError if it cannot."""
        self._app.finalize()
        # The worker looks tasks up through Celery's current and default app (as celery.contrib.testing does).
        self._app.set_current()
        self._app.set_default()
        worker_state.should_stop = None
        worker_state.should_terminate = None
        self._controller = _Controller(
            app=self._app,
            pool="threads",
            concurrency=self._concurrency,
            hostname=f"wan-batch-embedded-{threading.get_ident()}@localhost",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel="WARNING",
        )
        self._thread = threading.Thread(target=self._controller.start, name="celery-worker", daemon=True)
        self._thread.start()
        if not self._controller.ready.wait(_START_TIMEOUT_S):
            raise EmbeddedWorkerError("the embedded Celery worker did not start")

    def stop(self) -> None:
        """Warm shutdown: finish the tasks running now, leave the rest in Redis for the next run."""
        if self._thread is None:
            return
        worker_state.should_stop = 0
        self._thread.join(_STOP_TIMEOUT_S)
        worker_state.should_stop = None
        self._thread = None
