"""``corral card JOB [-o FILE]``: the job's card, one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("card")
@click.argument("job_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write it (default: <job id>.html here).")
def card_command(job_id: str, output: Path | None) -> int:
    """Write a job's card: spec, timeline, failure and plots, in one offline HTML file."""
    from corral.card import collect, plotly_bundle, render_card

    target = output or Path(f"{job_id}.html")
    text = render_card(collect(job_id), plotly_bundle())
    target.write_text(text, encoding="utf-8")
    click.echo(f"{target} ({len(text) / 2**20:.1f} MB)")
    return 0
