"""Connecting to the ledger's Redis from a URL that a user or a Celery broker setting gives."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import BusyLoadingError
from redis.retry import Retry

from jobs.errors import UsageError

#: A call rides out a Redis that restarts (and loads its append-only file) for about 20 s: 0.1 s, 0.2 s, ...
#: up to 2 s between tries. redis-py's `from_url` retries nothing unless told.
_RETRY = Retry(ExponentialWithJitterBackoff(base=0.1, cap=2.0), retries=15)
_ONCE_MORE = Retry(NoBackoff(), retries=1)


def redis_client(url: str, patient: bool = True) -> redis.Redis:
    """A client of the Redis at `url` (redis://, rediss://, unix://, or kombu's redis+socket://).

    Its calls are retried through a short outage (a restart); a longer one raises redis.ConnectionError.
    Not `patient` (a web page waiting on it): tried once more at once, and given up on in seconds.
    Raises UsageError for anything else; the message never shows the URL, which may hold a password.
    """
    retry, timeout_s = (_RETRY, 10) if patient else (_ONCE_MORE, 3)
    try:
        return redis.Redis.from_url(redis_py_url(url), retry=retry, retry_on_error=[BusyLoadingError],
                                    socket_timeout=timeout_s, socket_connect_timeout=min(timeout_s, 5),
                                    health_check_interval=30)  # fmt: skip
    except ValueError:
        raise UsageError("--redis/REDIS_URL: not a Redis URL (redis://HOST:6379/0, rediss://, unix:///PATH)") from None


def redis_py_url(broker_url: str) -> str:
    """kombu's `redis+socket:///path` as redis-py's `unix:///path`."""
    if broker_url.startswith("redis+socket://"):
        return "unix://" + broker_url.removeprefix("redis+socket://")
    return broker_url
