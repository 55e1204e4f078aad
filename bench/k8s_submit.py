"""Kubernetes submission: ``corral run --backend kubernetes`` against TorchX's Volcano scheduler.

Both cases submit the same job to the test cluster of ``tests/infra/k8s_cluster.py`` (a real
Kubernetes 1.36 control plane with Volcano, Kueue and JobSet, and 3 fake kubelets that run
pods as host processes, ignoring the image): a Volcano Job (``batch.volcano.sh/v1alpha1``)
in namespace ``default``, Volcano queue ``default``, gang of 2 pods, each a no-op.

- baseline: TorchX 0.7.0's own Kubernetes scheduler, from ``bench/.venv-peers``:
  ``bench/.venv-peers/bin/python bench/workloads/torchx_k8s_noop.py`` runs
  ``torchx.runner.get_runner().run(app, scheduler="kubernetes", cfg={"queue": "default",
  "namespace": "default"})`` for an AppDef of one role, ``num_replicas=2``, image
  ``corral-bench:latest``, ``python3 -c pass``, and prints the handle
  ``kubernetes://torchx/default:NAME``. TorchX renders one Volcano task per replica (svc and
  env plugins) and creates the Job; the pods run ``python3 -c pass``.
- corral: ``corral run --backend kubernetes --detach -o flavour=volcano -o poll_seconds=0.2
  --image corral-bench:latest --nodes 2 true``, the whole CLI process: interpreter start and
  imports, render, packing its (empty) working directory into the job's ConfigMap, creating
  the ConfigMap and the Volcano Job, the owner-reference patch, recording the job in the job
  store under ``CORRAL_HOME``; it prints the job id. The pods run corral's pod agent, which
  reads the plan and runs ``true``. The Volcano Job is the one annotated
  ``corral.dev/job-id=ID``.

What is timed, the same for both: t0 is ``time.perf_counter`` just before the submitting
subprocess starts (``subprocess.Popen``; its working directory an empty scratch folder,
``KUBECONFIG`` from the cluster, ``CORRAL_HOME`` in a temporary directory). From then on the
benchmark itself asks the API server every 50 ms (the ``kubernetes`` Python client, raw JSON,
two lists per look: Volcano Jobs and pods, cluster-wide) and stamps each look with the time its
answers arrived. Until the subprocess has printed the name, every new Volcano Job is followed;
then the one named is picked.

- submit→running: the first look at which the job has both its pods, each Running (or
  already Succeeded);
- submit→done: the first look at which the Volcano Job's ``status.state.phase`` is
  ``Completed``;
- submit process: the submitting subprocess's own wall time (t0 to its exit, from a thread
  that waits on it).

So both times are up to one poll (50 ms) plus one round trip late, alike for both cases. A run
counts only if the subprocess exits 0 and prints the job's name, the Volcano Job ends
``Completed`` (``Failed``, ``Aborted``, ``Terminated``... make the run invalid, reported with
the pods' phases), both pods were seen Running or Succeeded and both ended Succeeded, all
within ``--timeout`` s; the first invalid run ends that case (the report shows its output).
The TorchX subprocess gets no ``PYTHONPATH``/``PYTHONHOME`` (its virtual environment is
self-contained); corral's gets the environment as it is.

After each run the benchmark deletes the Volcano Job (its pods, PodGroup, Service and corral's
ConfigMap go with it through owner references; a leftover ConfigMap labelled
``corral.dev/job=NAME`` is deleted too) and waits until its pods are gone, so runs never
overlap. Before each run it waits (up to ``--idle-timeout`` s) until no pod is
active and no Volcano Job unfinished on the cluster; a run that met other active pods or
unfinished Volcano Jobs (someone else's tests) is counted as contended in the report and
flagged in the JSON. A Volcano Job Pending for 30 s or more (a gang that does not fit, left by
some test) has no pods and is ignored.

Run it as root, with the project's interpreter (the ``corral`` next to it is the one timed)::

    .venv/bin/python bench/k8s_submit.py              # 1 warm-up + 7 timed rounds
    .venv/bin/python bench/k8s_submit.py --quick      # 1 warm-up + 2 timed rounds
    .venv/bin/python bench/k8s_submit.py --rounds 15 --json /tmp/k8s-submit.json

After one warm-up round, every round runs both cases, in turn (alternating which goes first);
the table gives medians, the ratio to TorchX's median, means and ranges. The goal: corral no
slower than TorchX, for both times (ratio <= 1.00).

The pods' times include the fake kubelets' process start (each pod is a few processes on this
machine: ``python3 -c pass`` for TorchX, corral's pod agent then ``true`` for corral), so
submit→done is where the pod agent's own cost shows. The looks resolve 50 ms; on a busy machine
single runs spread by a few hundred ms, so compare the medians and the means of 7 or more
rounds.

The cluster: if the one at ``--state-dir`` (default /tmp/corral-k8s) is healthy, it is used as
it is and left running, never restarted or taken down (someone else's tests may be using it).
If nothing of it runs, the benchmark brings one up (``K8sCluster.up()``, timed and reported)
and takes it down at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness import BENCH_DIR, Case, Outcome, baseline_of

TORCHX_SCRIPT = BENCH_DIR / "workloads" / "torchx_k8s_noop.py"
PEERS_PYTHON = BENCH_DIR / ".venv-peers" / "bin" / "python"
DEFAULT_STATE_DIR = Path("/tmp/corral-k8s")

NAMESPACE = "default"
QUEUE = "default"
IMAGE = "corral-bench:latest"
PODS = 2
POLL_S = 0.05  # the benchmark's own looks at the API server
CORRAL_POLL_S = 0.2  # corral's poll_seconds (unused with --detach, pinned anyway)
GOAL = 1.00  # corral no slower than TorchX
TIMES = "\N{MULTIPLICATION SIGN}"
DASH = "\N{EN DASH}"
ARROW = "\N{RIGHTWARDS ARROW}"

VOLCANO = ("batch.volcano.sh", "v1alpha1", "jobs")
JOB_NAME_LABEL = "volcano.sh/job-name"  # set by Volcano's job controller on every pod
CORRAL_JOB_ID = "corral.dev/job-id"  # annotation of corral's objects
CORRAL_JOB_LABEL = "corral.dev/job"
TORCHX_HANDLE = re.compile(r"^kubernetes://[^/]*/([a-z0-9-]+):([a-z0-9.-]+)$")
FINISHED = {"Completed", "Failed", "Aborted", "Terminated"}  # Volcano's terminal job phases
STUCK_AFTER_S = 30.0  # a Volcano Job Pending this long is a gang that does not fit: ignored
ACTIVE_POD = {"Pending", "Running", "Unknown"}


# --------------------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    state_dir: Path
    kubeconfig: Path
    owned: Any = None  # the K8sCluster this benchmark started (and takes down), else None
    bring_up_s: float | None = None


def attach_cluster(state_dir: Path) -> Cluster:
    """Use the healthy cluster at state_dir, or bring one up (ours to take down)."""
    module = harness.infra_module("k8s_cluster")
    cluster = module.K8sCluster(state_dir)
    owned, bring_up = harness.reuse_or_bring_up(module, cluster, cluster.healthy(),
                                                "tests/infra/k8s_cluster.py")
    return Cluster(cluster.state_dir, cluster.kubeconfig, owned, bring_up)



# --------------------------------------------------------------------------- looking


class Kube:
    """The few API calls the benchmark makes, as raw JSON (no model objects: cheaper)."""

    def __init__(self, kubeconfig: Path) -> None:
        from kubernetes import client, config

        self.client = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.client)
        self.custom = client.CustomObjectsApi(self.client)

    @staticmethod
    def _json(response: Any) -> Any:
        return json.loads(response.data)

    def volcano_jobs(self) -> list[dict[str, Any]]:
        return list(self._json(self.custom.list_cluster_custom_object(
            *VOLCANO, _preload_content=False))["items"])

    def pods(self, selector: str | None = None) -> list[dict[str, Any]]:
        if selector is None:
            response = self.core.list_pod_for_all_namespaces(_preload_content=False)
        else:
            response = self.core.list_namespaced_pod(NAMESPACE, label_selector=selector,
                                                     _preload_content=False)
        return list(self._json(response)["items"])

    def delete_job(self, name: str) -> None:
        from kubernetes.client.rest import ApiException

        try:
            self.custom.delete_namespaced_custom_object(
                *VOLCANO[:2], NAMESPACE, VOLCANO[2], name, propagation_policy="Background")
        except ApiException as error:
            if error.status != 404:
                raise

    def delete_config_maps(self, selector: str) -> None:
        self.core.delete_collection_namespaced_config_map(NAMESPACE, label_selector=selector)

    def config_maps(self, selector: str) -> list[dict[str, Any]]:
        return list(self._json(self.core.list_namespaced_config_map(
            NAMESPACE, label_selector=selector, _preload_content=False))["items"])

    def version(self) -> str:
        from kubernetes import client

        return str(client.VersionApi(self.client).get_code().git_version)


def job_key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def pod_job_key(pod: dict[str, Any]) -> str | None:
    name = (pod["metadata"].get("labels") or {}).get(JOB_NAME_LABEL)
    return None if name is None else f"{pod['metadata'].get('namespace', '')}/{name}"


def job_phase(job: dict[str, Any]) -> str:
    return str(((job.get("status") or {}).get("state") or {}).get("phase") or "(none)")


def pod_phase(pod: dict[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "(none)")


def pod_active(pod: dict[str, Any]) -> bool:
    return pod_phase(pod) in ACTIVE_POD or bool(pod["metadata"].get("deletionTimestamp"))


def stuck(job: dict[str, Any]) -> bool:
    """Pending for STUCK_AFTER_S or more: a gang that cannot start (e.g. someone's test of one
    that does not fit); it waits in Volcano's queue without pods, so it neither blocks a run
    nor counts as contention."""
    created = job["metadata"].get("creationTimestamp")
    if job_phase(job) != "Pending" or not created:
        return False
    since = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    age = datetime.datetime.now(datetime.timezone.utc) - since
    return age.total_seconds() >= STUCK_AFTER_S


def busy_job(job: dict[str, Any]) -> bool:
    return job_phase(job) not in FINISHED and not stuck(job)


@dataclass
class Track:
    """What the looks saw of one Volcano Job that appeared during a run."""

    phase: str = "(none)"
    annotations: dict[str, str] = field(default_factory=dict)
    seen_s: float | None = None  # the first look that listed it
    running_s: float | None = None
    done_s: float | None = None
    pods: dict[str, str] = field(default_factory=dict)  # pod name -> phase at the last look
    nodes: dict[str, str] = field(default_factory=dict)  # pod name -> node


@dataclass
class Watch:
    """Every look of one run: the new Volcano Jobs, and whatever else was on the cluster."""

    before: set[str]  # Volcano Jobs (ns/name) there before the run started
    tracks: dict[str, Track] = field(default_factory=dict)
    others: set[str] = field(default_factory=set)  # other unfinished jobs, other active pods
    looks: int = 0

    def look(self, kube: Kube, t0: float) -> None:
        jobs, pods = kube.volcano_jobs(), kube.pods()
        now = time.perf_counter() - t0
        self.looks += 1
        for job in jobs:
            key = job_key(job)
            if key in self.before:
                if busy_job(job):
                    self.others.add(f"vcjob {key}")
                continue
            track = self.tracks.setdefault(key, Track(seen_s=now))
            track.phase = job_phase(job)
            track.annotations = dict(job["metadata"].get("annotations") or {})
            if track.done_s is None and track.phase in FINISHED:
                track.done_s = now
        for track in self.tracks.values():
            track.pods = {}
        for pod in pods:
            key = pod_job_key(pod)
            if key in self.tracks:
                name = pod["metadata"]["name"]
                self.tracks[key].pods[name] = pod_phase(pod)
                node = (pod.get("spec") or {}).get("nodeName")
                if node:
                    self.tracks[key].nodes[name] = node
            elif pod_active(pod):
                self.others.add(f"pod {pod['metadata'].get('namespace')}/"
                                f"{pod['metadata']['name']}")
        for track in self.tracks.values():
            up = [p for p in track.pods.values() if p in ("Running", "Succeeded")]
            if track.running_s is None and len(track.pods) == PODS and len(up) == PODS:
                track.running_s = now


def wait_for_idle(kube: Kube, timeout_s: float) -> list[str]:
    """Wait until no pod is active and no Volcano Job unfinished (stuck ones aside); what is
    still there."""
    deadline = time.monotonic() + timeout_s
    while True:
        busy = [f"vcjob {job_key(j)}" for j in kube.volcano_jobs() if busy_job(j)]
        busy += [f"pod {job_key(p)}" for p in kube.pods() if pod_active(p)]
        if not busy or time.monotonic() >= deadline:
            return busy
        time.sleep(0.2)


def clean_up(kube: Kube, name: str, timeout_s: float) -> str | None:
    """Delete the Volcano Job, wait until its pods are gone; None, or what was left."""
    kube.delete_job(name)
    selector = f"{JOB_NAME_LABEL}={name}"
    deadline = time.monotonic() + timeout_s
    while (left := kube.pods(selector)) and time.monotonic() < deadline:
        time.sleep(0.1)
    maps = f"{CORRAL_JOB_LABEL}={name}"
    if kube.config_maps(maps):  # normally gone with the job (owner reference)
        kube.delete_config_maps(maps)
    if left:
        return f"pods of {name} still there after {timeout_s:g} s: " + ", ".join(
            p["metadata"]["name"] for p in left)
    return None


# --------------------------------------------------------------------------- the cases


@dataclass
class Context:
    kube: Kube
    env: dict[str, str]  # ours plus KUBECONFIG and CORRAL_HOME
    workdir: Path  # empty scratch folder: the submitters' working directory
    logs: Path  # the submitters' stdout and stderr
    corral_home: Path
    corral: list[str]  # the corral command line
    torchx: list[str]  # the TorchX command line
    timeout_s: float


@dataclass
class Sample:
    seen_s: float | None = None  # the first look that listed the Volcano Job
    running_s: float | None = None
    done_s: float | None = None
    submit_s: float | None = None  # the submitting subprocess's wall time
    job: str | None = None  # the Volcano Job (its name)
    nodes: list[str] = field(default_factory=list)  # the nodes of its pods
    looks: int = 0  # how many times the API server was asked (2 lists each)
    contended: list[str] = field(default_factory=list)  # others on the cluster meanwhile
    failure: str | None = None


def corral_job_name(ctx: Context, out: str, watch: Watch) -> str | None:
    """The Volcano Job annotated with the job id corral printed."""
    job_id = out.strip().splitlines()[-1].strip() if out.strip() else ""
    for key, track in watch.tracks.items():
        if job_id and track.annotations.get(CORRAL_JOB_ID) == job_id:
            return key.split("/", 1)[1]
    return None


def torchx_job_name(ctx: Context, out: str, watch: Watch) -> str | None:
    """NAME of the handle ``kubernetes://torchx/NAMESPACE:NAME`` TorchX printed."""
    for line in reversed(out.strip().splitlines()):
        if match := TORCHX_HANDLE.match(line.strip()):
            return match.group(2) if match.group(1) == NAMESPACE else None
    return None


def strays(ctx: Context, watch: Watch, role: str) -> list[str]:
    """Names of the new Volcano Jobs a killed submitter may have made (to delete)."""
    from corral.store import Store

    db = ctx.corral_home / "corral.db"
    ids = {r.id for r in Store(db).jobs("kubernetes")} if db.exists() else set()
    names = []
    for key, track in watch.tracks.items():
        namespace, name = key.split("/", 1)
        ours = (track.annotations.get(CORRAL_JOB_ID) in ids if role == "corral"
                else name.startswith("noop-"))
        if namespace == NAMESPACE and ours:
            names.append(name)
    return names


def start_waiter(proc: subprocess.Popen[bytes], ended: list[float]) -> threading.Thread:
    """A thread that stamps the moment the submitter exits."""
    def wait() -> None:
        proc.wait()
        ended.append(time.perf_counter())

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


def submit_env(env: dict[str, str], role: str) -> dict[str, str]:
    """TorchX runs from its own virtual environment: no PYTHONPATH meant for corral leaks in."""
    if role == "corral":
        return env
    return {k: v for k, v in env.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def stop(proc: subprocess.Popen[bytes], waiter: threading.Thread) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    waiter.join()


def validity(track: Track) -> str | None:
    pods = ", ".join(f"{n} {p}" for n, p in sorted(track.pods.items())) or "no pods"
    if track.phase != "Completed":
        return f"the Volcano Job ended {track.phase} (pods: {pods})"
    if track.running_s is None:
        return f"never saw both pods Running or Succeeded (pods: {pods})"
    if len(track.pods) != PODS or set(track.pods.values()) != {"Succeeded"}:
        return f"expected {PODS} Succeeded pods, found: {pods}"
    return None


def run_case(ctx: Context, role: str, argv: list[str],
             job_name: Callable[[Context, str, Watch], str | None]) -> Sample:
    """Start the submitter, look every POLL_S until its job is done (or the time is up)."""
    watch = Watch({job_key(j) for j in ctx.kube.volcano_jobs()})
    out_path, err_path = ctx.logs / f"{role}.out", ctx.logs / f"{role}.err"
    ended: list[float] = []
    name: str | None = None
    failure: str | None = None
    env = submit_env(ctx.env, role)
    with out_path.open("wb") as out, err_path.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ctx.workdir, env=env, stdout=out, stderr=err,
                                start_new_session=True)
    waiter = start_waiter(proc, ended)
    try:
        tick = 0
        while True:
            exited = bool(ended)  # before the look: it then sees all the submitter made
            watch.look(ctx.kube, t0)
            if name is None and exited:
                waiter.join()
                text = out_path.read_text(errors="replace")
                name = job_name(ctx, text, watch)
                if proc.returncode != 0 or name is None:
                    failure = (f"the submitter exited {proc.returncode}"
                               + ("" if name else " without naming its Volcano Job"))
                    break
            track = watch.tracks.get(f"{NAMESPACE}/{name}") if name else None
            if track is not None and track.done_s is not None:
                break
            if time.perf_counter() - t0 > ctx.timeout_s:
                failure = f"timed out after {ctx.timeout_s:g} s"
                break
            tick += 1
            time.sleep(max(0.0, t0 + tick * POLL_S - time.perf_counter()))
    except BaseException:  # interrupted, or the API server failed us: leave nothing behind
        stop(proc, waiter)
        for stray in [name] if name else strays(ctx, watch, role):
            ctx.kube.delete_job(stray)
        raise
    if proc.poll() is None:  # timed out: end its process group and whatever it made
        stop(proc, waiter)
        watch.look(ctx.kube, t0)  # what it made after the last look
        for stray in strays(ctx, watch, role):
            ctx.kube.delete_job(stray)
    sample = Sample(submit_s=ended[0] - t0 if ended else None, job=name, looks=watch.looks)
    track = watch.tracks.get(f"{NAMESPACE}/{name}") if name else None
    if track is not None:
        sample.seen_s, sample.running_s, sample.done_s = (track.seen_s, track.running_s,
                                                          track.done_s)
        sample.nodes = sorted(track.nodes.values())
    sample.failure = failure or (validity(track) if track else "its Volcano Job was never seen")
    if sample.failure:
        text = (f"--- stdout\n{out_path.read_text(errors='replace').strip()}\n"
                f"--- stderr\n{err_path.read_text(errors='replace').strip()[-3000:]}")
        sample.failure = f"{sample.failure}\n{text}"
    newcomers = {f"vcjob {key}" for key in watch.tracks if key != f"{NAMESPACE}/{name}"}
    sample.contended = sorted(watch.others | newcomers)
    if name is not None:
        left = clean_up(ctx.kube, name, ctx.timeout_s)
        if left and not sample.failure:
            sample.failure = left
    return sample


def run_torchx(ctx: Context) -> Sample:
    return run_case(ctx, "baseline", ctx.torchx, torchx_job_name)


def run_corral(ctx: Context) -> Sample:
    return run_case(ctx, "corral", ctx.corral, corral_job_name)


def corral_argv(corral: Path) -> list[str]:
    return [str(corral), "run", "--backend", "kubernetes", "--detach", "-o", "flavour=volcano",
            "-o", f"poll_seconds={CORRAL_POLL_S}", "--image", IMAGE, "--nodes", str(PODS),
            "true"]


def torchx_argv(python: Path) -> list[str]:
    return [str(python), str(TORCHX_SCRIPT), QUEUE, NAMESPACE]


CASES = [
    Case("TorchX 0.7.0 `get_runner().run(app, scheduler=\"kubernetes\")`", "baseline",
         run_torchx),
    Case("`corral run --backend kubernetes --detach -o flavour=volcano`", "corral",
         run_corral),
]


# --------------------------------------------------------------------------- running


def describe(sample: Sample) -> str:
    if sample.failure:
        return "FAILED: " + sample.failure.splitlines()[0]
    note = f" (others: {', '.join(sample.contended)})" if sample.contended else ""
    return (f"seen {sample.seen_s:.3f} s, running {sample.running_s:.3f} s, done "
            f"{sample.done_s:.3f} s, submit {sample.submit_s:.3f} s on "
            f"{'+'.join(sample.nodes)}{note}")


def run_round(outcomes: list[Outcome], ctx: Context, first: int, timed: bool,
              idle_timeout: float) -> None:
    order = outcomes[first:] + outcomes[:first]
    for outcome in order:
        if outcome.failure is not None:
            continue
        busy = wait_for_idle(ctx.kube, idle_timeout)
        sample = outcome.case.run(ctx)
        sample.contended = sorted(set(sample.contended) | set(busy))
        print(f"  {outcome.case.role:<9} {sample.job}: {describe(sample)}", file=sys.stderr,
              flush=True)
        if sample.failure is not None:
            outcome.failure = sample.failure
        (outcome.samples if timed else outcome.warmup).append(sample)


def run_all(cluster: Cluster, kube: Kube, corral: Path, peers_python: Path, rounds: int,
            timeout_s: float, idle_timeout: float) -> list[Outcome]:
    outcomes = [Outcome(case) for case in CASES]
    with tempfile.TemporaryDirectory(prefix="corral-k8s-bench-") as tmp:
        scratch = Path(tmp)
        workdir, home, logs = scratch / "work", scratch / "corral-home", scratch / "logs"
        workdir.mkdir()
        logs.mkdir()
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "CORRAL_HOME": str(home)}
        ctx = Context(kube, env, workdir, logs, home, corral_argv(corral),
                      torchx_argv(peers_python), timeout_s)
        for number in range(rounds + 1):
            label = "warm-up round" if number == 0 else f"round {number}/{rounds}"
            print(f"{label}:", file=sys.stderr, flush=True)
            run_round(outcomes, ctx, number % len(outcomes), number > 0, idle_timeout)
    return outcomes


# --------------------------------------------------------------------------- reporting

METRICS = {"running": "submit→running", "done": "submit→done", "submit": "submit process"}


def values(outcome: Outcome, metric: str) -> list[float]:
    found = (getattr(s, f"{metric}_s") for s in outcome.samples)
    return [v for v in found if v is not None]


def median(outcome: Outcome, metric: str) -> float | None:
    if outcome.failure or not values(outcome, metric):
        return None
    return statistics.median(values(outcome, metric))


def ratio(outcome: Outcome, baseline: Outcome, metric: str) -> float | None:
    mine, base = median(outcome, metric), median(baseline, metric)
    return None if mine is None or base is None or base == 0 else mine / base


def corral_of(outcomes: list[Outcome]) -> Outcome:
    return next(o for o in outcomes if o.case.role == "corral")


def cell(outcome: Outcome, baseline: Outcome, metric: str) -> list[str]:
    """median | ratio | mean | range of one metric."""
    found = values(outcome, metric)
    rel = ratio(outcome, baseline, metric)
    if outcome is baseline:
        rel_text = "1.00" + TIMES
    else:
        rel_text = "n/a" if rel is None else f"{rel:.2f}{TIMES}"
    return [f"{statistics.median(found):.3f}", rel_text, f"{statistics.fmean(found):.3f}",
            f"{min(found):.3f}{DASH}{max(found):.3f}"]


def table(outcomes: list[Outcome]) -> str:
    baseline = baseline_of(outcomes)
    head = ["case"]
    for metric in METRICS.values():
        head += [f"{metric} median s", f"{TIMES} TorchX", "mean s", f"min{DASH}max s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for outcome in outcomes:
        label = outcome.case.name + (" — baseline" if outcome is baseline else "")
        if outcome.failure or not outcome.samples:
            first = (outcome.failure or "no samples").splitlines()[0]
            rows.append(f"| {label} | failed: {first} (output below) |"
                        + " |" * (len(head) - 2))
            continue
        cells = [label]
        for metric in METRICS:
            cells += cell(outcome, baseline, metric)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def summary(outcomes: list[Outcome]) -> str:
    baseline, corral = baseline_of(outcomes), corral_of(outcomes)
    lines, verdicts = [], []
    for metric in ("running", "done"):
        rel = ratio(corral, baseline, metric)
        label = METRICS[metric]
        if rel is None:
            lines.append(f"corral/TorchX {label}: failed")
            verdicts.append(False)
            continue
        mine, base = median(corral, metric) or 0.0, median(baseline, metric) or 0.0
        lines.append(f"corral/TorchX {label}: {rel:.2f}{TIMES} (corral {mine:.3f} s vs TorchX "
                     f"{base:.3f} s, {mine - base:+.3f} s, medians)")
        verdicts.append(rel <= GOAL)
    met = all(verdicts)
    lines.append(f"goal (corral no slower than TorchX, both ratios <= {GOAL:.2f}{TIMES}): "
                 + ("met" if met else "missed"))
    return "\n".join(lines)


def steps(outcome: Outcome) -> str:
    """Medians of the steps of one case's runs: submit to the job listed, to both pods
    running, to done."""
    pairs = {"job listed": ("", "seen"), "pods running": ("seen", "running"),
             "done": ("running", "done")}
    parts = []
    for label, (start, end) in pairs.items():
        spans = [getattr(s, f"{end}_s") - (getattr(s, f"{start}_s") if start else 0.0)
                 for s in outcome.samples]
        parts.append(f"{label} {'+' if start else ''}{statistics.median(spans):.3f} s")
    return ", ".join(parts)


def breakdown(outcomes: list[Outcome]) -> str | None:
    if any(o.failure or not o.samples for o in outcomes):
        return None
    lines = ["where the time goes (medians of each step; a job is listed up to 50 ms late):"]
    lines += [f"  {o.case.role:<9} {steps(o)}" for o in outcomes]
    return "\n".join(lines)


def contention_note(outcomes: list[Outcome]) -> str | None:
    hit = [(o.case.role, s) for o in outcomes for s in o.samples if s.contended]
    if not hit:
        return None
    runs = "; ".join(f"{role} {s.job} ({', '.join(s.contended[:4])}"
                     f"{', ...' if len(s.contended) > 4 else ''})" for role, s in hit)
    return (f"note: {len(hit)} timed run(s) met other pods or Volcano Jobs on the cluster, so "
            f"their times may include contention: {runs}")


def command_output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"? ({error})"
    lines = (done.stdout.strip() or done.stderr.strip()).splitlines()
    return lines[-1] if lines else "?"


def machine_info(cluster: Cluster, kube: Kube, corral: Path, peers_python: Path
                 ) -> dict[str, Any]:
    torchx = command_output([str(peers_python), "-c",
                             "import torchx, kubernetes; print(torchx.__version__, "
                             "'kubernetes', kubernetes.__version__)"])
    return {
        **harness.machine_facts(cluster.state_dir, cluster.owned, cluster.bring_up_s),
        "kubernetes": kube.version(),
        "torchx": torchx,
        "corral": str(corral),
        "corral_version": command_output([str(corral), "--version"]),
    }


def print_report(info: dict[str, Any], outcomes: list[Outcome], rounds: int) -> None:
    print(f"\n## Kubernetes submission: 2-pod no-op Volcano Job, corral vs TorchX, median of "
          f"{rounds} round(s) after 1 warm-up (looks every {POLL_S * 1000:.0f} ms)\n")
    print(f"machine: {info['nproc']} CPUs, load {info['load_avg_1m_at_start']} at start "
          f"{ARROW} {os.getloadavg()[0]:.2f} at end; {info['platform']}; Kubernetes "
          f"{info['kubernetes']}; TorchX {info['torchx']}; {info['corral_version']}")
    print(harness.cluster_line(info))
    print(table(outcomes), end="\n\n")
    print(summary(outcomes))
    steps_text = breakdown(outcomes)
    if steps_text:
        print(steps_text)
    harness.print_report_end(outcomes, contention_note(outcomes))


def write_json(path: Path, info: dict[str, Any], outcomes: list[Outcome], rounds: int,
               commands: dict[str, str]) -> None:
    baseline = baseline_of(outcomes)
    cases = [{
        "name": o.case.name.replace("`", ""),
        "role": o.case.role,
        "command": commands[o.case.role],
        "failure": o.failure,
        **{f"median_{m}_s": median(o, m) for m in METRICS},
        **{f"mean_{m}_s": statistics.fmean(values(o, m)) if values(o, m) else None
           for m in METRICS},
        **{f"{m}_vs_baseline": ratio(o, baseline, m) for m in METRICS},
        "samples": [asdict(s) for s in o.samples],
        "warmup": [asdict(s) for s in o.warmup],
    } for o in outcomes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": info, "rounds": rounds, "poll_s": POLL_S,
                                "cases": cases}, indent=1))
    print(f"\nraw samples written to {path}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.common_parser(__doc__.split("\n\n")[0], DEFAULT_STATE_DIR)
    parser.add_argument("--peers-python", type=Path, default=PEERS_PYTHON,
                        help=f"interpreter with TorchX (default: {PEERS_PYTHON})")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds one run may take before it counts as failed")
    parser.add_argument("--idle-timeout", type=float, default=60.0,
                        help="seconds to wait for other pods and jobs to leave before each run")
    args = harness.checked(parser, parser.parse_args(argv))
    if not args.peers_python.exists():
        parser.error(f"no interpreter at {args.peers_python}; give --peers-python (one with "
                     "torchx 0.7.0 and kubernetes)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cluster = attach_cluster(args.state_dir)
    try:
        kube = Kube(cluster.kubeconfig)
        info = machine_info(cluster, kube, args.corral, args.peers_python)
        outcomes = run_all(cluster, kube, args.corral, args.peers_python, args.rounds,
                           args.timeout, args.idle_timeout)
    finally:
        harness.release(cluster.owned)
    print_report(info, outcomes, args.rounds)
    if args.json:
        commands = {"baseline": shlex.join(torchx_argv(args.peers_python)),
                    "corral": shlex.join(corral_argv(args.corral))}
        write_json(args.json, info, outcomes, args.rounds, commands)
    return 1 if any(outcome.failure for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
