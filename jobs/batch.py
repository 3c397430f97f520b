"""What a manifest made: its valid jobs, what was counted of them as they were made, and every problem found."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from jobs.diagnostics import Diagnostic, Severity
from jobs.job import Job
from jobs.pricing import Units, units_of


@dataclass
class Tally:
    """What the jobs made of a manifest were, counted as they were made (they need not be kept)."""

    jobs: int = 0
    per_endpoint: Counter[str] = field(default_factory=Counter)
    #: Rows a matrix made several jobs of, and the jobs it made of them.
    expanded_rows: int = 0
    expanded_jobs: int = 0
    #: What one attempt of each job makes, per endpoint (`jobs.pricing`): few distinct ones, however many jobs.
    units: dict[str, Counter[Units]] = field(default_factory=dict)

    def add(self, job: Job) -> None:
        self.jobs += 1
        self.per_endpoint[job.endpoint] += 1
        self.units.setdefault(job.endpoint, Counter())[units_of(job.endpoint, job.input)] += 1

    def row_done(self, made: int) -> None:
        """Note that `made` jobs were made of one row."""
        if made > 1:
            self.expanded_rows += 1
            self.expanded_jobs += made


@dataclass
class Batch:
    """The jobs of a manifest, the number of records read, and every problem found."""

    file: str
    #: The valid jobs, in manifest order (empty when parsed with `keep_jobs=False`: see `made`).
    jobs: list[Job]
    records: int
    diagnostics: list[Diagnostic] = field(default_factory=list)
    made: Tally = field(default_factory=Tally)
    #: False when reading stopped before the end of the file: what was not read cannot be skipped, so none runs.
    complete: bool = True

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.WARNING]

    def matrix_expansion(self) -> tuple[int, int]:
        """(rows the matrix expanded, jobs it made of them); a matrix-only YAML counts as one row."""
        return self.made.expanded_rows, self.made.expanded_jobs

    def jobs_per_endpoint(self) -> dict[str, int]:
        return dict(sorted(self.made.per_endpoint.items()))
