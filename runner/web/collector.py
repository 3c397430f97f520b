"""`/metrics`: what the ledger counts, in Prometheus' text format (the `prometheus_client` library).

A scrape reads counters, never jobs: each batch's counts per status and per
error type, its window and its estimated cost so far (one pipeline for all),
and what workers counted as they went (`runner.ledger.metrics`), however many processes and machines
they run on.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from runner.batches.operations import cost_summary
from runner.ledger.metrics import Metrics
from runner.ledger.overview import BatchOverview, overviews
from runner.ledger.store import Ledger
from runner.web.source import LedgerSource

PREFIX = "wan_batch_"
#: What each counter the workers keep counts.
COUNTERS = {
    "submits": "Requests fal accepted (attempt: first, or a retry of a job that failed before)",
    "fal_calls": "HTTP calls made to fal by kind (submit, status, result, cancel, history) and HTTP status",
    "jobs_succeeded": "Jobs that ended with their outputs on disk",
    "jobs_failed": "Jobs that failed, by error type",
    "jobs_cancelled": "Jobs cancelled by the user",
    "outputs": "Output images downloaded",
    "download_bytes": "Bytes of output images downloaded",
    "uploads": "Local images uploaded to fal storage",
    "upload_bytes": "Bytes of local images uploaded to fal storage",
    "webhooks": "fal's webhooks by outcome (collect_now, step_now, already_handled, unknown_request; missed: a "
                "safety poll found the job done)",
}
HISTOGRAMS = {
    "queue_wait_seconds": "Time a request waited in fal's queue before it ran",
    "run_seconds": "Time a request ran at fal",
}


class LedgerCollector(Collector):
    """Reads the ledger at each scrape."""

    def __init__(self, source: LedgerSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        yield from self.source.read(_batch_gauges)
        yield from self.source.read(_counted)


def registry_for(source: LedgerSource) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(source))
    return registry


def _batch_gauges(ledger: Ledger) -> list[Metric]:
    jobs = GaugeMetricFamily(f"{PREFIX}jobs", "Jobs of each batch by status", labels=["batch", "status"])
    failed = GaugeMetricFamily(f"{PREFIX}failed_jobs", "Failed jobs of each batch by error type",
                               labels=["batch", "error_type"])  # fmt: skip
    in_flight = GaugeMetricFamily(f"{PREFIX}in_flight", "Jobs holding a slot of the batch's window", labels=["batch"])
    window = GaugeMetricFamily(f"{PREFIX}window", "The batch's in-flight window (--max-in-flight)", labels=["batch"])
    states = GaugeMetricFamily(f"{PREFIX}batches", "Batches in the ledger by state", labels=["state"])
    by_state = {"open": 0, "done": 0, "cancelled": 0}
    seen_all = overviews(ledger)
    for seen in seen_all:
        batch_id = seen.info.id
        by_state[seen.info.state] = by_state.get(seen.info.state, 0) + 1
        for status, n in seen.counts.items():
            jobs.add_metric([batch_id, status.value], n)
        for error_type, n in seen.failures.items():
            failed.add_metric([batch_id, error_type], n)
        in_flight.add_metric([batch_id], seen.in_flight)
        window.add_metric([batch_id], seen.info.max_in_flight)
    for state, n in by_state.items():
        states.add_metric([state], n)
    return [jobs, failed, in_flight, window, states, *_cost_gauges(seen_all)]


def _cost_gauges(seen_all: list[BatchOverview]) -> list[Metric]:
    spent = GaugeMetricFamily(f"{PREFIX}batch_estimated_cost_usd", "Estimated cost of the batch's attempts so far "
                              "(every attempt fal may bill, at its prices), in USD", labels=["batch"])  # fmt: skip
    cap = GaugeMetricFamily(f"{PREFIX}batch_cost_cap_usd", "The batch's cost cap (--max-cost), in USD",
                            labels=["batch"])  # fmt: skip
    for seen in seen_all:
        cost = cost_summary(seen.info, seen.spent_nusd, seen.failures)
        if cost is not None:
            spent.add_metric([seen.info.id], cost["estimated_cost_usd"])
        if cost is not None and cost["cap_usd"] is not None:
            cap.add_metric([seen.info.id], cost["cap_usd"])
    return [spent, cap]


def _counted(ledger: Ledger) -> list[Metric]:
    metrics = Metrics(ledger.redis, ledger.keys)
    rows: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name in COUNTERS}
    for name, labels, value in metrics.counters():
        rows.setdefault(name, []).append((labels, value))
    families: list[Metric] = []
    for name, found in rows.items():
        names = sorted({key for labels, _ in found for key in labels})
        family = CounterMetricFamily(f"{PREFIX}{name}", COUNTERS.get(name, name), labels=names)
        for labels, value in found:
            family.add_metric([labels.get(key, "") for key in names], value)
        families.append(family)
    histograms = metrics.histograms()
    for name, text in HISTOGRAMS.items():
        durations = HistogramMetricFamily(f"{PREFIX}{name}", text, labels=["endpoint"])
        for (found_name, found_labels), histogram in histograms.items():
            if found_name == name:
                durations.add_metric([dict(found_labels).get("endpoint", "")], histogram.cumulative(), histogram.sum)
        families.append(durations)
    return families
