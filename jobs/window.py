"""The in-flight window that finds fal's concurrency by itself (`--max-in-flight auto`): a pure rule.

fal runs an account's requests a few at a time (2 for a new account, up to 40)
and queues the rest. The window should keep just enough submitted that fal
always has the next job waiting when a slot frees, and no more: one or two of
ours in fal's queue. Each IN_QUEUE answer fal gives (to a submit, or to a
poll) says how many requests are ahead of one of ours:

- none ahead: fal has at most this one waiting, so it could run more; the
  window grows by one, if it is what holds the batch back;
- two or more ahead: more of ours wait than need to; it shrinks by one;
- more ahead than we have at fal: others' requests wait there too, so ours
  are not what fills the queue; the window stays.

Growing by one at each answer that says so makes the window grow as fast as
jobs end; it settles at fal's concurrency plus two.
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


def next_window(window: int, cap: int, in_flight: int, ahead: int | None, rule: WindowRule = WindowRule()) -> int:
    """The window after fal answered IN_QUEUE with `ahead` requests before one of ours (None: no such answer),
    with `in_flight` of the batch's jobs holding slots; never above `cap` nor below the floor."""
    if ahead is None or ahead >= in_flight:  # nothing learned, or others' requests wait there too
        return _bounded(window, cap, rule)
    if ahead == 0 and in_flight >= window:
        return _bounded(window + 1, cap, rule)
    if ahead + 1 > rule.waiting:
        return _bounded(window - 1, cap, rule)
    return _bounded(window, cap, rule)


def _bounded(window: int, cap: int, rule: WindowRule) -> int:
    return max(min(rule.floor, cap), min(cap, window))
