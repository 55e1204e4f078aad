"""``corral metrics JOB``: what the job's ranks recorded with ``corral.log``."""

from __future__ import annotations

import json

import click

from corral.cli.jobs import backend_of
from corral.console import printable
from corral.metrics import Point


def last_of_each(points: list[Point]) -> list[tuple[Point, int]]:
    """The last point of each (rank, metric), with how many points it has, in first-seen
    order."""
    last: dict[tuple[int, str], tuple[Point, int]] = {}
    for point in points:
        count = last[(point.rank, point.name)][1] if (point.rank, point.name) in last else 0
        last[(point.rank, point.name)] = (point, count + 1)
    return list(last.values())


@click.command("metrics")
@click.argument("job_id")
@click.option("--rank", type=int, default=None, help="Only this rank's points.")
@click.option("--name", "names", multiple=True, help="Only this metric (repeatable).")
@click.option("--all", "every", is_flag=True, help="Every point, not the last of each.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON lines: rank, time, step, name, value (and points).")
def metrics_command(job_id: str, rank: int | None, names: tuple[str, ...], every: bool,
                    as_json: bool) -> int:
    """Show what a job's ranks logged with corral.log (the last of each metric, or --all).

    Without --all: per rank and metric, the last value, its step and how many points."""
    points = backend_of(job_id).read_metrics(job_id, rank)
    if names:
        points = [p for p in points if p.name in names]
    shown = [(p, 1) for p in points] if every else last_of_each(points)
    if as_json:
        for point, count in shown:
            row: dict[str, object] = {"rank": point.rank, "time": point.time,
                                      "step": point.step, "name": point.name,
                                      "value": point.value}
            if not every:
                row["points"] = count
            click.echo(json.dumps(row))
        return 0
    if not shown:
        click.echo(f"job {job_id}: no metrics (ranks record them with corral.log(...))")
        return 0
    click.echo("RANK  STEP      NAME                  VALUE" + ("" if every else "  POINTS"))
    for point, count in shown:
        step = "-" if point.step is None else str(point.step)
        line = f"{point.rank:<5} {step:<9} {printable(point.name, 20):<20} {point.value:>12.6g}"
        click.echo(line + ("" if every else f"  {count}"))
    return 0
