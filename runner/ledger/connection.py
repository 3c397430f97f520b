"""Connecting to the ledger's Redis from a URL that a user or a Celery broker setting gives."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError
from redis.retry import Retry

from jobs.errors import UsageError

#: A call rides out a Redis that restarts (and loads its append-only file) for about 20 s: 0.1 s, 0.2 s, ...
#: up to 2 s between tries. redis-py's `from_url` retries nothing unless told.
_RETRY = Retry(ExponentialWithJitterBackoff(base=0.1, cap=2.0), retries=15)


def redis_client(url: str) -> redis.Redis:
    """A client of the Redis at `url` (redis://, rediss://, unix://, or kombu's redis+socket://).

    Its calls are retried through a short outage (a restart); a longer one raises redis.ConnectionError.
    Raises UsageError for anything else; the message never shows the URL, which may hold a password.
    """
    try:
        return redis.Redis.from_url(redis_py_url(url), retry=_RETRY, retry_on_error=[BusyLoadingError],
                                    socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)  # fmt: skip
    except ValueError:
        raise UsageError("--redis/REDIS_URL: not a Redis URL (redis://HOST:6379/0, rediss://, unix:///PATH)") from None


def redis_py_url(broker_url: str) -> str:
    """kombu's `redis+socket:///path` as redis-py's `unix:///path`."""
    if broker_url.startswith("redis+socket://"):
        return "unix://" + broker_url.removeprefix("redis+socket://")
    return broker_url
