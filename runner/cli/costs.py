"""How the CLI shows a batch's estimate, its cost cap and what it was charged."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import click

from jobs.job import Job
from jobs.pricing import Estimate, shown_usd, to_nusd, usd
from runner.batches.costs import NO_CAP, MaxCost, admitted_by_cap
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


def cap_lines(max_cost: MaxCost, jobs: Sequence[Job], prices: PriceList, found: Estimate) -> list[str]:
    """How a cap given now meets the estimate: whether every job fits, else about how many do."""
    if not isinstance(max_cost, Decimal):
        return ["  cost cap: none (--max-cost none)"] if max_cost == NO_CAP else []
    cap = to_nusd(max_cost)
    if found.total_nusd <= cap:
        return [f"  cost cap: {shown_usd(max_cost)}: every job fits, with retries up to"
                f" {shown_usd(usd(cap - found.total_nusd))}"]  # fmt: skip
    fits = admitted_by_cap(jobs, prices, cap)
    return [f"  cost cap: {shown_usd(max_cost)}: about {fits} of {len(jobs)} job(s) fit; the rest would end"
            " budget_exceeded (raise --max-cost to run them)"]


def echo_estimate(found: Estimate, prices: PriceList, max_cost: MaxCost = None, jobs: Sequence[Job] = ()) -> None:
    for line in estimate_lines(found, prices) + cap_lines(max_cost, jobs, prices, found):
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
