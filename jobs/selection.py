"""Which jobs of a manifest a trial run takes: the first N, or N spread over it (stable across reruns)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from jobs.job import Job


def first_jobs(jobs: Sequence[Job], limit: int) -> list[Job]:
    """The first `limit` jobs, in manifest order."""
    return list(jobs[:limit])


def sample_jobs(jobs: Sequence[Job], count: int) -> list[Job]:
    """`count` jobs spread over the manifest, in manifest order: those whose ids hash lowest.

    The same manifest gives the same sample on every run, so a trial reruns
    (and resumes) exactly the jobs it ran; the rest run later into the same batch.
    """
    chosen = set(sorted(range(len(jobs)), key=lambda n: hashlib.sha256(jobs[n].id.encode()).digest())[:count])
    return [job for n, job in enumerate(jobs) if n in chosen]
