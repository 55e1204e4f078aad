"""The Kubernetes backend: create the job's objects, watch them, read pod logs, delete.

One look at the cluster per poll interval answers every unfinished job of a namespace:
one list of corral's pods and one list of corral's workloads (per flavour in use), plus,
only while some job waits, one list of Volcano PodGroups or Kueue Workloads for the
reason it waits. A failed job's pod log is read once, to name the rank that failed first.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from corral.backends.base import (
    Capabilities,
    ConfiguredBackend,
    JobRef,
    Plan,
    check_workdir,
)
from corral.codepackage import pack, upload
from corral.errors import BackendError, SubmitError
from corral.launchers.failures import parse_mpirun, parse_torchrun
from corral.logs import LogSource
from corral.nodelog import first_exit, nodes_to_read, parse_pod_log
from corral.rundir import new_job_id
from corral.runtime.procs import describe_returncode
from corral.spec import Function, JobSpec, JobState
from corral.status import Failure, RankStatus
from corral.store import JobRecord, Observation, Store

from .api import KINDS, ApiError, Kind, KubeApi, resolve_kubeconfig
from .observe import (
    kueue_reason,
    pending_reason,
    pod_index,
    podgroup_reason,
    start_time,
    terminated,
    waiting_trouble,
    workload_state,
)
from .options import KubernetesOptions
from .render import (
    JOB_ID_ANNOTATION,
    JOB_LABEL,
    SELECTOR,
    WORKLOADS,
    KubePlan,
    pod_host,
    render,
)

POD = KINDS[("v1", "Pod")]
CONFIG_MAP = KINDS[("v1", "ConfigMap")]
SERVICE = KINDS[("v1", "Service")]
PODGROUP = KINDS[("scheduling.volcano.sh/v1beta1", "PodGroup")]
EVENT = KINDS[("v1", "Event")]
KUEUE_WORKLOAD = KINDS[("kueue.x-k8s.io/v1beta2", "Workload")]
WORKLOAD_KINDS = {flavour: KINDS[key] for flavour, key in WORKLOADS.items()}


class KubernetesBackend(ConfiguredBackend[KubernetesOptions]):
    name = "kubernetes"
    options_type = KubernetesOptions
    capabilities = Capabilities(
        gang=True, logs=True, follow=True, elastic=True, queues=True, arrays=False)
    cancel_grace = 60.0

    def __init__(self, options: KubernetesOptions | None = None, api: KubeApi | None = None,
                 store: Store | None = None) -> None:
        super().__init__(store)
        self.options = options or KubernetesOptions()
        self._api = api

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = KubeApi(self.options.kubeconfig, self.options.context)
        return self._api

    @property
    def namespace(self) -> str:
        return self.options.namespace

    def options_data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.options.model_dump(mode="json")
        data["kubeconfig"] = resolve_kubeconfig(self.options.kubeconfig)  # for later readers
        return data

    def engine_address(self) -> dict[str, Any]:
        return {"kubeconfig": resolve_kubeconfig(self.options.kubeconfig),
                "context": self.options.context, "namespace": self.namespace}

    # -- render / submit ------------------------------------------------------------------

    def render(self, spec: JobSpec, job_id: str | None = None) -> KubePlan:
        job_id = job_id or new_job_id(spec.name)
        workdir = os.path.abspath(spec.workdir or os.getcwd())
        import secrets

        return render(spec, job_id=job_id, options=self.options, local_workdir=workdir,
                      rsh_token=secrets.token_hex(16) if spec.launcher == "mpirun" else "")

    def record_details(self, spec: JobSpec, plan: Plan) -> dict[str, Any]:
        assert isinstance(plan, KubePlan)
        return {"namespace": plan.namespace, "name": plan.name, "flavour": plan.flavour}

    def submit(self, spec: JobSpec, plan: Plan | None = None) -> JobRef:
        kube_plan = self.render(spec) if plan is None else plan
        if not isinstance(kube_plan, KubePlan):
            raise SubmitError(f"the kubernetes backend cannot submit a "
                              f"{type(kube_plan).__name__}")
        if kube_plan.package:
            check_workdir(spec, kube_plan.workdir)
        for warning in kube_plan.warnings:
            sys.stderr.write(f"corral: warning: {warning}\n")
        return super().submit(spec, kube_plan)

    def _config_map(self, spec: JobSpec, plan: KubePlan) -> dict[str, Any]:
        """The job's ConfigMap with its binary parts: the code package, a function."""
        import base64

        config_map = dict(plan.config_map)
        binary: dict[str, str] = {}
        if plan.package:
            url = plan.pod_plan.get("package_url")
            data, skipped = pack(
                plan.workdir, exclude=self.options.package_exclude,
                max_kb=self.options.package_store_max_mb * 1024 if url
                else self.options.package_max_kb,
                where=f"package_store_max_mb={self.options.package_store_max_mb:g} allows"
                if url else "a ConfigMap can carry")
            for name, why in skipped:
                sys.stderr.write(f"corral: warning: not shipped with the job: {name} ({why})\n")
            if url:
                upload(data, url)
            else:
                binary["code.tar.gz"] = base64.b64encode(data).decode()
        if isinstance(spec.entrypoint, Function):
            from corral.runtime.call import dump_payload

            entry = spec.entrypoint
            binary["function.pkl"] = base64.b64encode(dump_payload(
                entry.fn, entry.call_args, dict(entry.call_kwargs))).decode()
        size = sum(len(v) for v in binary.values()) + len(str(config_map.get("data")))
        if size > self.options.package_max_kb * 1024:
            raise SubmitError(
                f"the job's ConfigMap would hold {size // 1024} KiB (code package and "
                f"function), over package_max_kb={self.options.package_max_kb} (Kubernetes "
                "keeps objects under 1 MiB): leave files out with -o package_exclude=GLOB, "
                "or put the code in the image with -o code=image")
        if binary:
            config_map["binaryData"] = binary
        return config_map

    def _launch(self, spec: JobSpec, plan: Plan, record: JobRecord) -> str | None:
        assert isinstance(plan, KubePlan)
        api = self.api
        created: list[tuple[Kind, str]] = []
        try:
            for manifest in (self._config_map(spec, plan), *plan.manifests[1:]):
                kind = KINDS[(manifest["apiVersion"], manifest["kind"])]
                obj = api.create(manifest)
                created.append((kind, obj["metadata"]["name"]))
            owner = {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                     "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
                     "blockOwnerDeletion": False}
            for kind, name in created[:-1]:  # deleted with the workload
                api.patch(kind, plan.namespace, name,
                          {"metadata": {"ownerReferences": [owner]}})
        except BaseException as exc:
            for kind, name in reversed(created):  # nothing half-submitted stays
                try:
                    api.delete(kind, plan.namespace, name, propagation="Background")
                except BackendError:
                    pass
            if isinstance(exc, ApiError):
                raise SubmitError(str(exc)) from None
            raise
        return plan.name

    # -- describe -------------------------------------------------------------------------

    def _flavour(self, record: JobRecord) -> str:
        return str((record.details or {}).get("flavour") or self.options.flavour)

    def describe_many(self, records: Sequence[JobRecord]) -> dict[str, Observation]:
        named = {r.engine_id: r for r in records if r.engine_id}
        if not named:
            return {}
        api = self.api
        pods: dict[str, list[dict[str, Any]]] = {}
        for pod in api.list(POD, self.namespace, SELECTOR):
            job = (pod["metadata"].get("labels") or {}).get(JOB_LABEL, "")
            pods.setdefault(job, []).append(pod)
        workloads: dict[str, dict[str, Any]] = {}
        for flavour in sorted({self._flavour(r) for r in named.values()}):
            for obj in api.list(WORKLOAD_KINDS[flavour], self.namespace, SELECTOR):
                workloads[obj["metadata"]["name"]] = obj
        waiting = [n for n, r in named.items() if n in workloads and not any(
            (p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")
            for p in pods.get(n, []))]
        reasons = self._queue_reasons(waiting, named) if waiting else {}
        found: dict[str, Observation] = {}
        for name, record in named.items():
            workload = workloads.get(name)
            if workload is None:
                if api.get(WORKLOAD_KINDS[self._flavour(record)], self.namespace, name):
                    continue  # created after our list: next time
                kind = WORKLOADS[self._flavour(record)][1]
                found[record.id] = Observation(  # by corral's cancel, or by someone else
                    JobState.CANCELLED, f"cancelled: its {kind} {self.namespace}/{name} was "
                    "deleted", finished=time.time())
                continue
            found[record.id] = self._observe(record, workload, pods.get(name, []),
                                             reasons.get(name, ""))
        return found

    def _queue_reasons(self, names: list[str], named: dict[str, JobRecord]) -> dict[str, str]:
        """Why waiting jobs wait: Volcano PodGroups (and their events), Kueue Workloads."""
        reasons: dict[str, str] = {}
        flavours = {self._flavour(named[n]) for n in names}
        try:
            if "volcano" in flavours:
                groups = self.api.list(PODGROUP, self.namespace)
                events = self.api.list(EVENT, self.namespace,
                                       field_selector="involvedObject.kind=PodGroup")
                for group in groups:
                    owner = next((o["name"] for o in group["metadata"].get(
                        "ownerReferences") or [] if o.get("kind") == "Job"), None)
                    if owner in names:
                        reasons[owner] = podgroup_reason(group, events)
            if flavours & {"jobset", "job"}:
                for wl in self.api.list(KUEUE_WORKLOAD, self.namespace):
                    owner = next((o["name"] for o in wl["metadata"].get(
                        "ownerReferences") or []), None)
                    if owner in names:
                        reasons[owner] = kueue_reason(wl)
        except ApiError as exc:  # no Kueue or Volcano here: no queue reasons
            if exc.status not in (403, 404):
                raise
        return reasons

    def _observe(self, record: JobRecord, workload: dict[str, Any],
                 pods: list[dict[str, Any]], queue_reason: str) -> Observation:
        flavour = self._flavour(record)
        by_node: dict[int, dict[str, Any]] = {}
        for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", "")):
            index = pod_index(pod)
            if index is not None:
                by_node[index] = pod  # the newest pod of each node
        phases = {i: (p.get("status") or {}).get("phase", "Pending") for i, p in by_node.items()}
        state, reason = workload_state(flavour, workload)
        deleting = workload["metadata"].get("deletionTimestamp")
        if state is None or state is JobState.PENDING:
            started_any = any(ph in ("Running", "Succeeded", "Failed") for ph in phases.values())
            state = JobState.RUNNING if started_any else JobState.PENDING
            if state is JobState.PENDING:
                admitted = queue_reason == "Kueue: admitted"  # then the scheduler says why
                reason = ((not admitted and queue_reason) or reason
                          or pending_reason(by_node, record.nodes) or queue_reason)
            trouble = next((w for p in by_node.values() if (w := waiting_trouble(p))), None)
            if trouble:
                reason = f"{trouble[0]}: {trouble[1]}".rstrip(": ")
            if deleting:
                reason = "being deleted: waiting for its pods to stop"
        started = min((t for p in by_node.values() if (t := start_time(
            (p.get("status") or {}).get("startTime")))), default=None)
        if state is not JobState.PENDING:
            started = started or record.started or time.time()
        failure = None
        finished = None
        if state.is_terminal():
            finished = time.time()
            if state is JobState.FAILED:
                failure = self._attribute_failure(record, by_node, reason)
                reason = failure.describe()
            elif state is JobState.TIMEOUT:
                failure = None
        notes = (f"{WORKLOADS[flavour][1]} {self.namespace}/{workload['metadata']['name']}",
                 *(f"node {i}: pod {p['metadata']['name']} on "
                   f"{(p.get('spec') or {}).get('nodeName') or '(not scheduled)'}: {phases[i]}"
                   for i, p in sorted(by_node.items())))
        return Observation(state, reason, started=started, finished=finished,
                           failure=failure, notes=notes,
                           ranks=self._ranks(record, state, by_node, failure))

    def _ranks(self, record: JobRecord, state: JobState, by_node: dict[int, dict[str, Any]],
               failure: Failure | None) -> tuple[RankStatus, ...]:
        per_node = record.procs_per_node
        ranks = []
        for rank in range(record.nodes * per_node):
            node = rank // per_node
            pod = by_node.get(node)
            host = (pod.get("spec") or {}).get("nodeName") if pod else None
            phase = (pod.get("status") or {}).get("phase") if pod else None
            rank_state = {"Running": JobState.RUNNING, "Succeeded": JobState.SUCCEEDED,
                          "Failed": JobState.FAILED}.get(phase or "", JobState.PENDING)
            if state.is_terminal() and rank_state in (JobState.PENDING, JobState.RUNNING):
                rank_state = JobState.CANCELLED if state is not JobState.SUCCEEDED else state
            code = None
            if failure is not None and failure.rank is not None:
                if rank == failure.rank:
                    rank_state, code = JobState.FAILED, failure.returncode
                elif rank_state is JobState.FAILED:
                    rank_state = JobState.CANCELLED  # stopped because another rank failed
            elif rank_state is JobState.SUCCEEDED:
                code = 0
            ranks.append(RankStatus(rank=rank, node=node, host=host, state=rank_state,
                                    returncode=code))
        return tuple(ranks)

    def _attribute_failure(self, record: JobRecord, by_node: dict[int, dict[str, Any]],
                           reason: str) -> Failure:
        """The rank that failed first, its pod and its node, from the failed pods' logs."""
        failed = sorted((t.get("finishedAt") or "", i, p) for i, p in by_node.items()
                        if (t := terminated(p)) and t.get("exitCode"))
        if not failed:
            return Failure(node=0, rank=None, returncode=None, reason=reason or "failed",
                           time=time.time())
        logs = {node: self._log_tail(pod) for _, node, pod in failed}
        exits = [(found, node) for _, node, _ in failed
                 if (found := first_exit(logs[node], node)) is not None]
        node = min(exits)[1] if exits else failed[0][1]  # the earliest exit of all
        pod, lines = by_node[node], logs[node]
        ended = terminated(pod) or {}
        rank, code = None, int(ended.get("exitCode") or 1)
        if exits:
            (_, rank, code), _ = min(exits)
        if record.launcher in ("torchrun", "deepspeed", "mpirun"):  # it names the rank
            parse = parse_mpirun if record.launcher == "mpirun" else parse_torchrun
            inner = parse("\n".join(
                t for s, t in parse_pod_log(lines, node) if s.kind == "node"))
            if inner is not None:
                rank, code = inner.rank, inner.returncode
        home = rank // record.procs_per_node if rank is not None else node
        pod_name = pod["metadata"]["name"]
        host = (pod.get("spec") or {}).get("nodeName") or "?"
        if home != node:  # mpirun on node 0 named a rank of another pod
            node, lines = home, []
            if home in by_node:
                pod = by_node[home]
                pod_name, host = pod["metadata"]["name"], pod["spec"].get("nodeName") or "?"
                lines = logs.get(home) or self._log_tail(pod)
                ended = terminated(pod) or ended
            else:  # already deleted by its workload controller: named as it was
                flavour = self._flavour(record)
                pod_name = pod_host(flavour, record.engine_id or "", home).split(".")[0]
                seen = [r.host for r in self.store.status(record.id).ranks
                        if r.node == home and r.host]
                host = seen[0] if seen else self._scheduled_on(pod_name)
        why = ended.get("reason", "")
        cause = (f"{why} {ended.get('message', '')}".strip()
                 if why in ("OOMKilled", "DeadlineExceeded", "Evicted")
                 else describe_returncode(code))
        own = [t for s, t in parse_pod_log(lines, node)
               if rank is None or (s.kind == "rank" and s.number == rank)]
        return Failure(node=node, rank=rank, returncode=code,
                       reason=f"{cause} (pod {pod_name} on node {host})",
                       last_lines=own[-20:], time=time.time(),
                       log=f"corral logs {record.id}" + (f" --rank {rank}" if rank is not None
                                                         else ""))

    def _scheduled_on(self, pod: str) -> str:
        """The node a deleted pod ran on, from the scheduler's event (kept for an hour)."""
        try:
            events = self.api.list(EVENT, self.namespace, field_selector=(
                f"involvedObject.kind=Pod,involvedObject.name={pod},reason=Scheduled"))
        except BackendError:
            return "?"
        found = [str(e.get("message", "")).rsplit(" to ", 1)[-1] for e in events
                 if " to " in str(e.get("message", ""))]
        return found[-1] if found else "?"

    def _log_tail(self, pod: dict[str, Any]) -> list[str]:
        try:
            return list(self.api.log_lines(self.namespace, pod["metadata"]["name"], tail=400))
        except BackendError:
            return []

    def find_submitted(self, records: Sequence[JobRecord]) -> dict[str, str]:
        wanted = {r.id for r in records}
        found: dict[str, str] = {}
        for flavour in sorted({self._flavour(r) for r in records}):
            for obj in self.api.list(WORKLOAD_KINDS[flavour], self.namespace, SELECTOR):
                job_id = (obj["metadata"].get("annotations") or {}).get(JOB_ID_ANNOTATION)
                if job_id in wanted:
                    found[job_id] = obj["metadata"]["name"]
        return found

    def discard_lost(self, record: JobRecord) -> None:
        """The ConfigMap (and Service) of a submission that died before its workload was
        created: nothing owns them, so nothing else would delete them."""
        name = (record.details or {}).get("name")
        if not name:
            return
        for kind in (CONFIG_MAP, SERVICE):
            for obj in self.api.list(kind, self.namespace, f"{SELECTOR},{JOB_LABEL}={name}"):
                if (obj["metadata"].get("annotations") or {}).get(
                        JOB_ID_ANNOTATION) == record.id:
                    self.api.delete(kind, self.namespace, obj["metadata"]["name"],
                                    propagation="Background")

    # -- logs, results, cancel ------------------------------------------------------------

    def _pods_by_node(self, record: JobRecord) -> dict[int, dict[str, Any]]:
        name = record.engine_id or ""
        by_node: dict[int, dict[str, Any]] = {}
        pods = self.api.list(POD, self.namespace, f"{SELECTOR},{JOB_LABEL}={name}")
        for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", "")):
            index = pod_index(pod)
            if index is not None:
                by_node[index] = pod
        return by_node

    def logs(self, job_id: str, rank: int | None = None, follow: bool = False
             ) -> Iterator[tuple[LogSource, str]]:
        """Every rank's lines (or one rank's), from the pods' logs, labelled."""
        record = self.store.get(job_id)
        self.check_rank(record, rank)
        nodes = nodes_to_read(record.nodes, record.procs_per_node, record.launcher, rank)
        return self._pod_logs(record, nodes, rank, follow)

    def _pod_logs(self, record: JobRecord, nodes: list[int], rank: int | None,
                  follow: bool) -> Iterator[tuple[LogSource, str]]:
        wanted = (lambda s: s.kind == "rank" and s.number == rank) if rank is not None else (
            lambda s: True)
        if not follow:
            by_node = self._pods_by_node(record)
            for node in nodes:
                pod = by_node.get(node)
                if pod is None or (pod.get("status") or {}).get("phase") == "Pending":
                    continue
                lines = self.api.log_lines(self.namespace, pod["metadata"]["name"])
                for source, text in parse_pod_log(list(lines), node):
                    if wanted(source):
                        yield source, text
            return
        found: queue.Queue[tuple[LogSource, str] | None] = queue.Queue()
        following: set[int] = set()
        open_readers = 0
        while True:
            done = self.describe(record.id).state.is_terminal()  # first: then every pod
            for node, pod in self._pods_by_node(record).items():  # that ran is listed below
                phase = (pod.get("status") or {}).get("phase", "Pending")
                if node in nodes and node not in following and phase != "Pending":
                    following.add(node)
                    open_readers += 1
                    threading.Thread(target=self._follow_pod, daemon=True, args=(
                        pod["metadata"]["name"], node, found)).start()
            if done and not open_readers:
                return
            deadline = time.monotonic() + max(self.poll_interval, 0.2)
            while open_readers and (left := deadline - time.monotonic()) > 0:
                try:
                    item = found.get(timeout=left)
                except queue.Empty:
                    break
                if item is None:
                    open_readers -= 1
                elif wanted(item[0]):
                    yield item
            if not open_readers and not done:
                time.sleep(max(0.0, deadline - time.monotonic()))

    def _follow_pod(self, pod: str, node: int,
                    out: queue.Queue[tuple[LogSource, str] | None]) -> None:
        """One started pod's lines, until its container ends (in a thread of its own)."""
        try:
            for line in self.api.log_lines(self.namespace, pod, follow=True):
                for source, text in parse_pod_log([line], node):
                    out.put((source, text))
        except BackendError as exc:
            out.put((LogSource("node", node), f"corral: cannot read the log of {pod}: {exc}"))
        finally:
            out.put(None)

    def read_result(self, job_id: str, rank: int) -> bytes | None:
        """A distributed function's result: the ``[result N]`` line of its pod's log."""
        import base64

        record = self.store.get(job_id)
        pod = self._pods_by_node(record).get(rank // record.procs_per_node)
        if pod is None:
            return None
        marker = f"[result {rank}] "
        for line in self.api.log_lines(self.namespace, pod["metadata"]["name"]):
            if line.startswith(marker):
                return base64.b64decode(line[len(marker):])
        return None

    def _stop(self, record: JobRecord) -> None:
        name = record.engine_id or self.find_submitted([record]).get(record.id)
        if name is not None:
            self.api.delete(WORKLOAD_KINDS[self._flavour(record)], self.namespace, name)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "flavour": self.options.flavour,
                "namespace": self.namespace}

