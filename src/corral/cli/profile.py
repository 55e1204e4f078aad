"""``corral profile JOB``: each rank's CPU, memory and GPU use, as its node agent sampled it."""

from __future__ import annotations

import json
from typing import Any

import click

from corral.cli.jobs import backend_of


def summarize(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rank (None: the node's own processes): samples, mean and peak CPU %, peak RSS and
    GPU memory (bytes), peak GPU utilization."""
    by_rank: dict[Any, list[dict[str, Any]]] = {}
    for row in samples:
        by_rank.setdefault((row.get("rank") is None, row.get("rank")), []).append(row)
    out = []
    for (_, rank), rows in sorted(by_rank.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        cpus = [r["cpu"] for r in rows]
        out.append({"rank": rank, "samples": len(rows),
                    "cpu_mean": round(sum(cpus) / len(cpus), 1), "cpu_max": max(cpus),
                    "rss_max": max(r["rss"] for r in rows),
                    "gpu_mem_max": max((r.get("gpu_mem", 0) for r in rows), default=0),
                    "gpu_util_max": max((r.get("gpu_util", 0.0) for r in rows), default=0.0)})
    return out


@click.command("profile")
@click.argument("job_id")
@click.option("--all", "every", is_flag=True, help="Every sample, not a summary per rank.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
def profile_command(job_id: str, every: bool, as_json: bool) -> int:
    """Show each rank's CPU, memory and GPU use, as its node agent sampled it."""
    samples, notes = backend_of(job_id).read_profile(job_id)
    rows = samples if every else summarize(samples)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return 0
    if not rows:
        click.echo(f"job {job_id}: no resource samples (the local backend's node agents take "
                   "them every CORRAL_PROFILE_SECONDS, default 1)")
    elif every:
        click.echo("TIME           RANK  CPU%    RSS MB  GPU MB  GPU%")
        for row in rows:
            rank = "node" if row["rank"] is None else str(row["rank"])
            click.echo(f"{row['t']:<14.2f} {rank:<5} {row['cpu']:>5.1f} {row['rss'] / 2**20:>9.1f}"
                       f" {row.get('gpu_mem', 0) / 2**20:>7.1f} {row.get('gpu_util', 0):>5.1f}")
    else:
        click.echo("RANK  SAMPLES  CPU% MEAN  CPU% MAX  RSS MB MAX  GPU MB MAX  GPU% MAX")
        for row in rows:
            rank = "node" if row["rank"] is None else str(row["rank"])
            click.echo(f"{rank:<5} {row['samples']:>7}  {row['cpu_mean']:>9.1f} "
                       f"{row['cpu_max']:>9.1f} {row['rss_max'] / 2**20:>11.1f} "
                       f"{row['gpu_mem_max'] / 2**20:>11.1f} {row['gpu_util_max']:>9.1f}")
    for note in notes:
        click.echo(note)
    return 0
