"""Start a job the queue dispatched: claim it, render it on its placement, supervise it.

The same steps serve a background job (in a child the agent forked) and a foreground
``corral run`` (in that process, streaming the ranks' lines): claim with the dispatch token
(a revoked dispatch starts nothing), render the plan with the GPUs the placement holds,
then the local backend's supervisor runs it to its end and writes every change to the store.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.errors import SubmitError
from corral.jobstate import JobState
from corral.queue.ledger import Ledger, Row
from corral.rundir import RunDir
from corral.states import Source
from corral.store import Observation, Owner, Store, open_store

if TYPE_CHECKING:
    from corral.backends.base import LineSink
    from corral.backends.local.render import LocalPlan
    from corral.backends.local.supervisor import Supervisor
    from corral.queue.shared import Peer
    from corral.spec import JobSpec

SPEC_FILE = "spec.pkl"
SPEC_JSON = "spec.json"  # a shared queue's job: plain data, validated again when read
ENVIRON_FILE = "environ.json"


def save_submission(run: RunDir, spec: JobSpec, environ: dict[str, str] | None,
                    peer: Peer | None = None) -> None:
    """What a queued job needs to start later: the spec (functions and all) and, for a
    background job, the submitter's environment (readable by its owner only).

    For another user (a shared queue's agent, as root): the spec as JSON (it is read back
    as root: never a pickle), and a run directory that user may read but not change, with
    a ``logs`` folder the same way (root writes in both) and ``results`` the user's own."""
    if peer is not None:
        _write_private(run.path / SPEC_JSON, json.dumps(spec.model_dump(mode="json")).encode())
        for folder in (run.path, run.logs):
            os.chown(folder, 0, peer.gid)
            folder.chmod(0o750)
        results = run.path / "results"
        results.mkdir(mode=0o700, exist_ok=True)
        os.chown(results, peer.uid, peer.gid)
        if environ is not None:
            _write_private(run.path / ENVIRON_FILE, json.dumps(environ).encode(), peer)
        return
    import cloudpickle

    try:
        data = cloudpickle.dumps(spec)
    except Exception as exc:
        raise SubmitError(
            f"entrypoint: the job or its function's arguments cannot be pickled ({exc}); "
            "move unpicklable objects (locks, open files, sockets) inside the function"
        ) from exc
    _write_private(run.path / SPEC_FILE, data)
    if environ is not None:
        _write_private(run.path / ENVIRON_FILE, json.dumps(environ).encode())


def save_function(run: RunDir, spec: JobSpec) -> None:
    """A function job's payload (the function and its arguments), refused here if it
    cannot be pickled: before the job is recorded, nothing starts."""
    from corral.spec import Function

    entry = spec.entrypoint
    if not isinstance(entry, Function):
        return
    from corral.runtime.call import dump_payload

    try:
        data = dump_payload(entry.fn, entry.call_args, dict(entry.call_kwargs))
    except Exception as exc:
        raise SubmitError(
            f"entrypoint: the function {entry.label} or its arguments cannot be pickled "
            f"({exc}); move unpicklable objects (locks, open files, sockets) inside the "
            "function") from exc
    _write_private(run.function_payload, data)


def _write_private(path: Path, data: bytes, peer: Peer | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        if peer is not None:
            os.fchown(handle.fileno(), peer.uid, peer.gid)
        handle.write(data)


def load_spec(run: RunDir) -> JobSpec:
    if (run.path / SPEC_JSON).exists():
        from corral.spec import JobSpec

        return JobSpec(**json.loads((run.path / SPEC_JSON).read_text(encoding="utf-8")))
    import cloudpickle

    spec: JobSpec = cloudpickle.loads((run.path / SPEC_FILE).read_bytes())
    return spec


def _fresh_attempt(run: RunDir, attempt: int, run_as: dict[str, Any] | None) -> None:
    """A requeued job starts with empty logs; the last attempt's are kept beside them."""
    for marker in ("cancel", "preempt"):
        (run.path / marker).unlink(missing_ok=True)
    if attempt > 1 and run.logs.exists() and any(run.logs.iterdir()):
        kept = run.path / f"logs.attempt-{attempt - 1}"
        shutil.rmtree(kept, ignore_errors=True)
        run.logs.rename(kept)
    run.logs.mkdir(mode=0o700, exist_ok=True)
    if run_as is not None:  # the user reads its logs; root writes them
        os.chown(run.logs, 0, run_as["gid"])
        run.logs.chmod(0o750)


def task_environment(row: Row) -> dict[str, str]:
    """Variables an array task sees (like SLURM_ARRAY_TASK_ID)."""
    if row.array_id is None or row.array_index is None:
        return {}
    return {"CORRAL_ARRAY_JOB_ID": row.array_id, "CORRAL_ARRAY_TASK_ID": str(row.array_index)}


def prepare(store: Store, job_id: str, token: str, sink: LineSink | None = None,
            environ: bool = True, spec: JobSpec | None = None,
            plan: LocalPlan | None = None) -> Supervisor | None:
    """Claim the dispatched job and get its supervisor ready; None if the dispatch was
    taken back. ``environ``: run with the submitter's saved environment (background).
    A foreground run passes its spec, and its plan, used as it is when the placement
    holds no GPU (nothing in it depends on the placement then)."""
    from corral.backends.local.client import LocalBackend
    from corral.backends.local.options import LocalOptions
    from corral.backends.local.supervisor import Supervisor
    ledger = Ledger(store)
    row = ledger.claim(job_id, token, Owner.me())
    if row is None or row.run_dir is None:
        return None
    record = store.get(job_id)
    run = RunDir(Path(row.run_dir))
    # A shared queue (root) runs another user's job: ranks drop to that user, and only
    # they see the user's environment.
    run_as = None
    user_env: dict[str, str] | None = None
    if os.geteuid() == 0 and row.uid != 0:
        from corral.queue.shared import groups_of

        gid = run.path.stat().st_gid
        run_as = {"uid": row.uid, "gid": gid, "groups": groups_of(row.uid, gid)}
    try:
        spec = spec or load_spec(run)
        saved = (json.loads((run.path / ENVIRON_FILE).read_text(encoding="utf-8"))
                 if environ and (run.path / ENVIRON_FILE).exists() else None)
        if run_as is not None:
            user_env = {**(saved or {}), **task_environment(row)}
        else:
            if saved is not None:
                os.environ.clear()
                os.environ.update(saved)
            os.environ.update(task_environment(row))
        _fresh_attempt(run, record.attempt, run_as)
        options = LocalOptions(**{k: v for k, v in (record.options or {}).items()
                                  if k in LocalOptions.__dataclass_fields__})
        if run_as is not None:  # nothing of the user's is imported as root to fork from
            options = LocalOptions(fork=False, grace_seconds=options.grace_seconds)
        backend = LocalBackend(options=options, store=store, root=run.path.parent,
                               for_user=None if run_as is None else row.uid)
        gpus = tuple(str(g) for g in (row.placement or {}).get("gpus", []))
        if plan is None or gpus or plan.job_id != job_id or record.attempt > 1:
            plan = backend.render_placed(spec, job_id, gpus)
        if not run.function_payload.exists():
            save_function(run, spec)
        run.write_json("plan.json", plan.to_json())
    except Exception as exc:  # nothing started: say why on the job
        reason = f"could not start: {exc}"
        store.apply(job_id, Observation(JobState.FAILED, reason), Source.SUPERVISOR)
        return None
    return Supervisor(run=run, store=store, job_id=job_id, plan=plan.to_json(),
                      launcher=spec.launcher, grace=options.grace_seconds, sink=sink,
                      ending=lambda observed: ledger.ending(job_id, observed),
                      run_as=run_as, user_env=user_env)


def start_job(store_path: Path, job_id: str, token: str) -> int:
    """In the agent's forked child: run the job to its end; the job's exit status."""
    import signal

    store = open_store(store_path)
    record = store.get(job_id)
    if record.run_dir:
        log = os.open(f"{record.run_dir}/supervisor.log",
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    supervisor = prepare(store, job_id, token)
    if supervisor is None:
        return 0
    signal.signal(signal.SIGTERM, lambda *_: supervisor.request_cancel())
    signal.signal(signal.SIGINT, lambda *_: supervisor.request_cancel())
    try:
        status = supervisor.run_to_end()
    finally:
        from corral.queue.agent import wake

        wake(store)
    return status.returncode

