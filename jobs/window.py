"""The in-flight window that finds fal's concurrency by itself (`--max-in-flight auto`): a pure rule.

fal runs an account's requests a few at a time (2 for a new account, up to
40) and queues the rest. The window should keep just enough submitted that
fal always has the next job waiting when a slot frees, and no more: one or
two of ours in fal's queue. fal answers each submit IN_QUEUE with how many
requests wait ahead of the new one:

- none ahead: fal has at most this one waiting, so it could run more; the
  window grows by one, if it is what holds the batch back;
- two or more ahead: more of ours wait than need to; it shrinks by one;
- more ahead than we can have waiting there: others' requests wait too (fal's
  queue may be shared), so ours are not what fills it; the window stays.

Only submit answers count: a poll's position is of an older request, with
ours both ahead of it and behind it. Growing by one at each answer that says
so makes the window grow as fast as jobs end; it settles at fal's concurrency
plus two (plus the jobs still downloading their outputs, which hold a slot).
"""

from __future__ import annotations

from dataclasses import dataclass

#: The window of an automatic batch before fal has said anything.
START = 10


@dataclass(frozen=True)
class WindowRule:
    #: Never fewer requests at fal than this.
    floor: int = 2
    #: Ours that may wait in fal's queue (the next job is there when a slot frees).
    waiting: int = 2


def next_window(window: int, cap: int, in_flight: int, ahead: int | None, ours_ahead_at_most: int,
                rule: WindowRule = WindowRule()) -> int:  # fmt: skip
    """The window after fal answered a submit IN_QUEUE with `ahead` requests before it (None: no position), with
    `in_flight` of the batch's jobs holding slots, of which at most `ours_ahead_at_most` can wait in fal's queue
    before it; never above `cap` nor below the floor."""
    if ahead is None or ahead > ours_ahead_at_most:  # nothing learned, or others' requests wait there too
        return _bounded(window, cap, rule)
    if ahead == 0 and in_flight >= window:
        return _bounded(window + 1, cap, rule)
    if ahead + 1 > rule.waiting:
        return _bounded(window - 1, cap, rule)
    return _bounded(window, cap, rule)


def _bounded(window: int, cap: int, rule: WindowRule) -> int:
    return max(min(rule.floor, cap), min(cap, window))
