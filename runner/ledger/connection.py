"""Connecting to the ledger's Redis from a URL that a user or a Celery broker setting gives."""

from __future__ import annotations

import redis

from jobs.errors import UsageError


def redis_client(url: str) -> redis.Redis:
    """A client of the Redis at `url` (redis://, rediss://, unix://, or kombu's redis+socket://).

    Raises UsageError for anything else; the message never shows the URL, which may hold a password.
    """
    try:
        return redis.Redis.from_url(redis_py_url(url))
    except ValueError:
        raise UsageError("--redis/REDIS_URL: not a Redis URL (redis://HOST:6379/0, rediss://, unix:///PATH)") from None


def redis_py_url(broker_url: str) -> str:
    """kombu's `redis+socket:///path` as redis-py's `unix:///path`."""
    if broker_url.startswith("redis+socket://"):
        return "unix://" + broker_url.removeprefix("redis+socket://")
    return broker_url
