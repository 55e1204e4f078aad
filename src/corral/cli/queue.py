"""``corral queue``, ``corral nodes``, ``corral hold`` / ``release``: the local queue.

They read the job store directly (no agent needed), so they answer while an agent
restarts; ``set``, ``hold`` and ``release`` write it and nudge the agent.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

from corral.console import columns, printable
from corral.errors import SpecError
from corral.store import open_store


def _ledger() -> Any:
    from corral.queue.ledger import Ledger

    return Ledger(open_store())


@click.group("queue", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def queue_group(ctx: click.Context, as_json: bool) -> int:
    """The local queue: its queues (weights, limits, usage) and each user's fair share."""
    if ctx.invoked_subcommand is not None:
        return 0
    from corral.queue.fairshare import QUEUE_PREFIX, FairShare
    from corral.queue.ledger import DISPATCHED, RUNNING, WAITING
    from corral.queue.policy import active_users

    ledger = _ledger()
    now = time.time()
    rows = ledger.rows()
    queues = ledger.queues()
    usage = ledger.decayed_usage(now)
    names = sorted({*queues, *(r.queue for r in rows), "default"})
    from corral.queue.machine import probe

    state = ledger.state(rows, probe().node, now, 1.0)
    fair = FairShare(ledger.usage(), queues, active_users(state))
    queue_rows, user_rows = [], []
    for name in names:
        q = queues.get(name)
        queue_rows.append({
            "queue": name, "weight": q.weight if q else 1.0,
            "max_running": q.max_running if q else None,
            "running": sum(r.queue == name and r.phase in (DISPATCHED, RUNNING) for r in rows),
            "pending": sum(r.queue == name and r.phase == WAITING for r in rows),
            "usage_cpu_s": round(usage.get(QUEUE_PREFIX + name, 0.0), 1),
            "share": round(fair.queue_share.get(name, 0.0), 3)})
    users = sorted({k for k in usage if not k.startswith(("*", QUEUE_PREFIX))}
                   | {r.user for r in rows})
    for user in users:
        user_rows.append({
            "user": user, "usage_cpu_s": round(usage.get(user, 0.0), 1),
            "running": sum(r.user == user and r.phase in (DISPATCHED, RUNNING) for r in rows),
            "pending": sum(r.user == user and r.phase == WAITING for r in rows),
            "fairshare": {name: round(fair.factor(user, name), 3) for name in names}})
    if as_json:
        click.echo(json.dumps({"queues": queue_rows, "users": user_rows}, indent=1))
        return 0
    click.echo(columns(("QUEUE", "WEIGHT", "MAX RUNNING", "RUNNING", "PENDING", "SHARE",
                        "USAGE (CPU-s)"),
                       [[printable(r["queue"], 40), f"{r['weight']:g}",
                         str(r["max_running"] or "-"), str(r["running"]), str(r["pending"]),
                         f"{r['share']:.3f}", f"{r['usage_cpu_s']:.1f}"] for r in queue_rows]),
               nl=False)
    if user_rows:
        click.echo("")
        click.echo(columns(("USER", "RUNNING", "PENDING", "USAGE (CPU-s)", "FAIR SHARE"),
                           [[printable(r["user"], 40), str(r["running"]), str(r["pending"]),
                             f"{r['usage_cpu_s']:.1f}",
                             " ".join(f"{q}={v:.3f}" for q, v in r["fairshare"].items())]
                            for r in user_rows]), nl=False)
    return 0


@queue_group.command("set")
@click.argument("name")
@click.option("--weight", type=float, default=1.0, show_default=True,
              help="Its share of the machine against the other queues' weights.")
@click.option("--max-running", type=int, help="At most this many of its jobs at once.")
def queue_set_command(name: str, weight: float, max_running: int | None) -> int:
    """Create or change a queue of the local queue."""
    problems: list[tuple[str, object, str]] = []
    if not name or len(name) > 63 or not name.replace("-", "").replace("_", "").isalnum():
        problems.append(("name", name, "letters, digits, - and _ (at most 63)"))
    if not weight > 0 or weight > 1e6:
        problems.append(("weight", weight, "a number above 0 (at most 1e6)"))
    if max_running is not None and max_running < 1:
        problems.append(("max-running", max_running, "at least 1"))
    if problems:
        raise SpecError(problems)
    store = open_store()
    if store.shared:
        from corral.queue.shared import Request, request

        request(store.path.parent, Request("set_queue", queue={
            "name": name, "weight": weight, "max_running": max_running}))
    else:
        _ledger().set_queue(name, weight, max_running)
        _wake()
    click.echo(f"queue {name}: weight {weight:g}, max running {max_running or '-'}")
    return 0


def _wake() -> None:
    from corral.queue.agent import wake

    wake(open_store())


@click.command("nodes")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def nodes_command(as_json: bool) -> int:
    """This machine's CPUs, memory and GPUs, and what queued jobs hold of them."""
    from corral.queue.ledger import DISPATCHED, RUNNING
    from corral.queue.machine import probe

    machine = probe()
    rows = [r for r in _ledger().rows() if r.phase in (DISPATCHED, RUNNING) and r.placement]
    cpus = sum(s["cpus"] for r in rows for s in r.placement["shares"])
    memory = sum(s.get("memory", 0.0) for r in rows for s in r.placement["shares"])
    gpus: dict[int, list[tuple[str, float]]] = {}
    for r in rows:
        for share in r.placement["shares"]:
            for index, fraction in share.get("gpus", []):
                gpus.setdefault(int(index), []).append((r.job_id, float(fraction)))
    data = {**machine.to_json(), "allocated": {"cpus": cpus, "memory_mb": memory},
            "jobs": len(rows),
            "gpu_use": [{"gpu": gid, "held": sum(f for _, f in gpus.get(i, [])),
                         "jobs": [j for j, _ in gpus.get(i, [])]}
                        for i, gid in enumerate(machine.gpu_ids)]}
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return 0
    click.echo(f"{os.uname().nodename}: {cpus:g}/{machine.cpus:g} CPUs, "
               f"{memory:g}/{machine.memory:g} MiB, {len(machine.gpu_ids)} GPU(s) "
               f"(from {machine.gpu_source}); {len(rows)} job(s) running")
    for i, gid in enumerate(machine.gpu_ids):
        held = gpus.get(i, [])
        name = f" {machine.gpu_names[i]}" if i < len(machine.gpu_names) else ""
        jobs = ", ".join(f"{j} ({f:g})" for j, f in held) or "free"
        click.echo(f"  GPU {gid}{name}: {sum(f for _, f in held):g} held: {jobs}")
    return 0


def _set_held(job_ids: tuple[str, ...], held: bool) -> int:
    from corral.cli.jobs import for_each_job

    store = open_store()
    if store.shared:
        from corral.queue.shared import Request, request

        reply = request(store.path.parent, Request("hold" if held else "release",
                                                   job_ids=list(job_ids)))
        for message in reply.messages:
            click.echo(message)
        return 0
    ledger = _ledger()

    def act(job_id: str) -> None:
        ledger.check_owner(job_id, os.getuid())
        changed = ledger.set_held(job_id, held)
        word = "held" if held else "released"
        click.echo(f"{job_id}: {word}" if changed else f"{job_id}: not waiting, unchanged")

    _, code = for_each_job(job_ids, act)
    from corral.queue.agent import ensure_agent

    ensure_agent(open_store())  # held jobs alone let the agent go idle
    _wake()
    return code


@click.command("hold")
@click.argument("job_ids", nargs=-1, required=True)
def hold_command(job_ids: tuple[str, ...]) -> int:
    """Keep waiting jobs from starting (reason Held) until `corral release`."""
    return _set_held(job_ids, True)


@click.command("release")
@click.argument("job_ids", nargs=-1, required=True)
def release_command(job_ids: tuple[str, ...]) -> int:
    """Let held jobs start again."""
    return _set_held(job_ids, False)


@queue_group.command("serve")
@click.argument("home", type=click.Path(file_okay=False, path_type=Path))
def queue_serve_command(home: Path) -> int:
    """Run a queue shared by this machine's users, as root (users set CORRAL_HOME=HOME)."""
    from corral.queue.agent import serve
    from corral.queue.serve import prepare_home

    home = home.resolve()
    prepare_home(home)
    os.environ["CORRAL_HOME"] = str(home)  # run directories and logs go there too
    store = open_store(home / "corral.db")
    click.echo(f"corral: serving the shared queue in {home} (users: CORRAL_HOME={home})",
               err=True)
    return serve(store, idle=0.0, shared=True)
