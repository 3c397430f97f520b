"""How the CLI shows a batch's estimate, its cost cap and what it was charged."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, NoReturn

import click

from jobs.batch import Batch
from jobs.errors import UsageError
from jobs.job import Job
from jobs.pricing import Estimate, shown_usd, usd
from runner.batches.costs import Priced, admitted_by_cap, check_cap
from runner.batches.request import RunRequest
from runner.batches.run import dry_run_batch
from runner.fal.pricing import PriceList


def estimate_lines(found: Estimate, prices: PriceList) -> list[str]:
    """The estimate per endpoint and in all, with the unit, price and source used, and what was said of prices."""
    jobs = sum(line.jobs for line in found.endpoints)
    partial = "" if found.complete else " (of the jobs that have one)"
    lines = [f"estimated cost: {shown_usd(usd(found.total_nusd))} for {jobs} job(s), one attempt each{partial}"]
    for line in found.endpoints:
        head = f"  {line.endpoint}: {line.jobs} job(s)"
        if line.price is None or line.quantity is None or line.cost_nusd is None:
            why = prices.missing.get(line.endpoint, line.problem or "no known price")
            lines.append(f"{head}: {why}; not counted: give --price {line.endpoint}=USD/UNIT")
            continue
        lines.append(f"{head}, {line.quantity:f} {line.price.unit.value}(s) x {line.price.shown}"
                     f" = {shown_usd(usd(line.cost_nusd))} ({line.price.source})")  # fmt: skip
    lines += [f"  note: {note}" for note in prices.notes]
    return lines


def cap_lines(priced: Priced, jobs: Sequence[Job]) -> list[str]:
    """How the batch's cap meets the estimate: whether every job fits, else about how many do."""
    cap, found = priced.cap_nusd, priced.estimate
    if cap is None:
        return []
    kept = " (its last run's; --max-cost none removes it)" if priced.cap_kept else ""
    if priced.spent_nusd:  # a rerun: which of its jobs are left to send is the ledger's to say
        left = shown_usd(usd(max(0, cap - priced.spent_nusd)))
        return [f"  cost cap: {shown_usd(usd(cap))}{kept}: {shown_usd(usd(priced.spent_nusd))} charged by earlier runs,"
                f" {left} left"]  # fmt: skip
    if found.total_nusd <= cap:
        return [f"  cost cap: {shown_usd(usd(cap))}{kept}: every job fits, with retries up to"
                f" {shown_usd(usd(cap - found.total_nusd))}"]  # fmt: skip
    fits = admitted_by_cap(jobs, priced.prices, cap)
    return [f"  cost cap: {shown_usd(usd(cap))}{kept}: about {fits} of {len(jobs)} job(s) fit; the rest would end"
            " budget_exceeded (raise --max-cost to run them)"]


def echo_estimate(priced: Priced, jobs: Sequence[Job] = ()) -> None:
    for line in estimate_lines(priced.estimate, priced.prices) + cap_lines(priced, jobs):
        click.echo(line, err=True)


def cost_summary_line(summary: dict[str, Any]) -> str | None:
    """The report summary's cost in one line, or None when it has none."""
    cost, total = summary.get("cost"), summary.get("estimated_cost_usd")
    if not isinstance(cost, dict) or total is None:
        return None
    line = f"  estimated cost: {shown_usd(Decimal(str(total)))} (from the listed prices)"
    if cost.get("cap_usd") is not None:
        line += f"; cost cap {shown_usd(Decimal(str(cost['cap_usd'])))}"
    if cost.get("budget_exceeded"):
        line += f"; {cost['budget_exceeded']} job(s) not sent for it (budget_exceeded: raise the cap and retry them)"
    if cost.get("unpriced_jobs"):
        line += f"; {cost['unpriced_jobs']} job(s) of endpoints with no known price not counted"
    return line


def cost_json(found: Estimate, prices: PriceList) -> dict[str, Any]:
    return {**found.to_dict(), "price_notes": prices.notes}


def show_dry_run(request: RunRequest, batch: Batch, as_json: bool) -> NoReturn:
    """Print what the batch would cost, then exit 0: nothing was uploaded, recorded or sent."""
    try:
        priced = dry_run_batch(request, batch)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        cap = None if priced.cap_nusd is None else {"cap_usd": float(usd(priced.cap_nusd)),
                                                    "jobs_that_fit": admitted_by_cap(batch.jobs, priced.prices,
                                                                                     priced.cap_nusd)}  # fmt: skip
        click.echo(json.dumps({"jobs": len(batch.jobs), "cost": {**cost_json(priced.estimate, priced.prices),
                                                                 "cap": cap}, "dry_run": True}, indent=2))
    else:
        echo_estimate(priced, batch.jobs)
    try:
        check_cap(priced.cap_nusd, priced.estimate)
    except UsageError as exc:
        raise click.UsageError(f"{exc} (a run would be refused so)") from None
    if not as_json:
        click.echo(f"dry run: {len(batch.jobs)} job(s) priced; nothing was uploaded, recorded or sent", err=True)
    sys.exit(0)
