"""``corral flow run|resume|show|logs|ls``: flows of steps, each step a corral job."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from corral.console import columns, printable
from corral.errors import SpecError

FLOW_FAILED = 1


@click.group("flow")
def flow_group() -> None:
    """Flows: steps, fan-out, gang steps, artifacts and resume."""


def parse_params(cls: type, given: tuple[str, ...]) -> dict[str, Any]:
    """``--lr 0.1 --epochs=3`` against the flow's Parameters (typed, required ones)."""
    from corral.flow.spec import parameters_of

    declared = {p.name: p for p in parameters_of(cls).values()}
    values: dict[str, Any] = {}
    items = list(given)
    while items:
        item = items.pop(0)
        if item == "--":
            continue
        if not item.startswith("--") or item == "--":
            raise SpecError([("parameter", item, "--NAME VALUE for one of: "
                              + (", ".join(declared) or "(the flow has no parameters)"))])
        name, sep, value = item[2:].partition("=")
        if name not in declared and name.replace("-", "_") in declared:
            name = name.replace("-", "_")  # --fail-rank for Parameter("fail_rank")
        if name not in declared:
            raise SpecError([("parameter", name, "one of: "
                              + (", ".join(declared) or "(the flow has no parameters)"))])
        if not sep:
            if not items:
                raise SpecError([("parameter", name, "a value after --" + name)])
            value = items.pop(0)
        values[name] = declared[name].convert(value)
    for name, parameter in declared.items():
        if name not in values:
            if parameter.required:
                raise SpecError([("parameter", name, f"required: give --{name} VALUE")])
            values[name] = parameter.default
    return values


def _run_options(option_pairs: tuple[str, ...], backend: str) -> dict[str, Any]:
    from corral.backends import list_options
    from corral.cli.run import parse_options

    return parse_options(option_pairs, list_options(backend))


def _finish(record: Any) -> int:
    if record.state == "SUCCEEDED":
        click.echo(f"corral: flow run {record.id} SUCCEEDED", err=True)
        return 0
    click.echo(f"corral: flow run {record.id} {record.state}: {printable(record.reason, 2000)}",
               err=True)
    return FLOW_FAILED


@flow_group.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--backend", default="local", show_default=True,
              help="Where steps run (a step's @corral(backend=...) overrides it).")
@click.option("-o", "--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="A backend option for every step.")
@click.option("--max-workers", type=click.IntRange(1, 1000), default=16, show_default=True,
              help="At most this many tasks at once.")
@click.option("--datastore", help="Where artifacts go (fsspec URL; default "
              "file://$CORRAL_HOME/flows).")
@click.argument("params", nargs=-1, type=click.UNPROCESSED)
def flow_run_command(file: str, backend: str, option_pairs: tuple[str, ...],
                     max_workers: int, datastore: str | None, params: tuple[str, ...]) -> int:
    """Run the flow in FILE [--PARAM VALUE ...]."""
    from corral.flow.datastore import default_url
    from corral.flow.graph import FlowGraph
    from corral.flow.runtime import FlowRun
    from corral.flow.task import load_flow_class
    from corral.store import open_store

    path = str(Path(file).resolve())
    cls = load_flow_class(path)
    graph = FlowGraph.from_class(cls)
    run = FlowRun(path, cls, graph, parse_params(cls, params), open_store(), backend,
                  _run_options(option_pairs, backend), max_workers,
                  datastore or default_url())
    return _finish(run.run())


@flow_group.command("resume")
@click.argument("run_id")
@click.option("--from", "from_step", help="Rerun from this step (default: the first that "
              "failed); the steps before it are reused.")
@click.option("--backend", default="local", show_default=True)
@click.option("-o", "--option", "option_pairs", multiple=True, metavar="KEY=VALUE")
@click.option("--max-workers", type=click.IntRange(1, 1000), default=16, show_default=True)
def flow_resume_command(run_id: str, from_step: str | None, backend: str,
                        option_pairs: tuple[str, ...], max_workers: int) -> int:
    """Run RUN_ID again, reusing its finished steps, from the failed (or given) step."""
    from corral.flow.graph import FlowGraph
    from corral.flow.records import FlowRecords
    from corral.flow.runtime import FlowRun, first_failed_step, rerun_from
    from corral.flow.task import load_flow_class
    from corral.store import open_store

    records = FlowRecords(open_store())
    origin = records.run(run_id)
    cls = load_flow_class(origin.file, origin.flow)
    graph = FlowGraph.from_class(cls)
    step = from_step or first_failed_step(records, origin, graph)
    run = FlowRun(origin.file, cls, graph, origin.params, open_store(), backend,
                  _run_options(option_pairs, backend), max_workers, origin.datastore,
                  origin=origin, rerun=rerun_from(graph, step))
    return _finish(run.run())


@flow_group.command("show")
@click.argument("run_or_file")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def flow_show_command(run_or_file: str, as_json: bool) -> int:
    """The graph of a flow FILE, or a run's steps and tasks with their jobs."""
    from corral.flow.records import FlowRecords
    from corral.store import open_store

    if run_or_file.endswith(".py"):
        from corral.flow.graph import FlowGraph
        from corral.flow.task import load_flow_class

        graph = FlowGraph.from_class(load_flow_class(run_or_file))
        data = graph.to_json()
        if as_json:
            click.echo(json.dumps(data, indent=1))
        else:
            for node in graph.nodes.values():
                arrow = " -> " + ", ".join(node.next) if node.next else ""
                extra = (f" (foreach {node.foreach})" if node.foreach else
                         f" (num_parallel={node.num_parallel})" if node.num_parallel else "")
                click.echo(f"{node.name} [{node.kind.value}]{arrow}{extra}")
        return 0
    records = FlowRecords(open_store())
    run = records.run(run_or_file)
    tasks = records.tasks(run.id)
    if as_json:
        click.echo(json.dumps({"run": run.__dict__, "tasks": [t.__dict__ for t in tasks]},
                              indent=1, default=str))
        return 0
    click.echo(f"{run.flow} run {run.id}: {run.shown_state}"
               + (f" (resumed from {run.origin})" if run.origin else "")
               + (f"\n  {printable(run.reason, 2000)}" if run.reason else ""))
    click.echo(columns(("STEP", "TASK", "STATE", "JOB", "ATTEMPT"), [
        [printable(t.step, 60), printable(t.task_id, 40), t.state, t.job_id or "-",
         str(t.attempt)] for t in tasks]), nl=False)
    return 0


@flow_group.command("logs")
@click.argument("run_id")
@click.argument("step")
@click.option("--task", "task_id", help="Which task of the step (default: all).")
@click.option("--rank", type=int, help="One rank of a gang step's job.")
def flow_logs_command(run_id: str, step: str, task_id: str | None, rank: int | None) -> int:
    """The output of a step's tasks (their jobs' logs)."""
    from corral.backends import backend_for_job
    from corral.console import LinePrinter
    from corral.flow.records import FlowRecords
    from corral.store import open_store

    store = open_store()
    tasks = [t for t in FlowRecords(store).tasks(run_id, step)
             if task_id is None or t.task_id == task_id]
    if not tasks:
        raise SpecError([("step", step, f"a step of run {run_id} with tasks")])
    for job_id in dict.fromkeys(t.job_id for t in tasks if t.job_id):
        record = store.get(job_id)
        click.echo(f"== {step} job {job_id} ({record.state.value})")
        printer = LinePrinter(record.procs_per_node)
        for source, line in backend_for_job(record).logs(job_id, rank=rank):
            if rank is None:
                printer(source, line)
            else:
                click.echo(line)
    return 0


@flow_group.command("card")
@click.argument("run_id")
@click.argument("step", required=False)
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), default=".",
              show_default=True, help="The folder to write the cards in.")
def flow_card_command(run_id: str, step: str | None, out_dir: str) -> int:
    """Write a card per step of a run (each of its jobs), or of one step: STEP-JOB.html."""
    from pathlib import Path

    from corral.card import collect, plotly_bundle, render_card
    from corral.flow.records import FlowRecords
    from corral.store import open_store

    tasks = [t for t in FlowRecords(open_store()).tasks(run_id, step) if t.job_id]
    if not tasks:
        raise SpecError([("step" if step else "run", step or run_id,
                          f"a {'step of run ' + run_id if step else 'flow run'} whose tasks "
                          "ran as jobs (corral flow show lists them)")])
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    bundle = plotly_bundle()
    jobs = dict.fromkeys((t.step, t.job_id) for t in tasks)
    for task_step, job_id in jobs:
        assert job_id is not None
        target = folder / f"{task_step}-{job_id}.html"
        target.write_text(render_card(collect(job_id), bundle), encoding="utf-8")
        click.echo(str(target))
    return 0


@flow_group.command("ls")
@click.argument("flow", required=False)
def flow_ls_command(flow: str | None) -> int:
    """Recorded flow runs, newest first."""
    from corral.flow.records import FlowRecords
    from corral.store import open_store

    runs = FlowRecords(open_store()).runs(flow)
    click.echo(columns(("RUN", "FLOW", "STATE", "STARTED", "REASON"), [
        [r.id, printable(r.flow, 60), r.shown_state, time.strftime("%m-%d %H:%M:%S",
                                                              time.localtime(r.created)),
         printable(r.reason.splitlines()[0] if r.reason else "", 100)] for r in runs]),
        nl=False)
    return 0
