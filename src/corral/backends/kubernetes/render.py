"""Render a job as Kubernetes objects. Pure: no cluster is asked anything.

Every flavour runs one pod per node, each running :mod:`corral.runtime.pod` with the same
plan (the processes of every node, rendered here with the launcher); a pod finds its node
in the variable its workload controller sets. The pods reach each other by stable DNS
names under a headless Service, so the rendezvous address (rank 0's pod) is known before
anything runs:

=========  ===================================  =====================  ==========================
flavour    workload                             node rank from         rank 0's host
=========  ===================================  =====================  ==========================
volcano    batch.volcano.sh/v1alpha1 Job        VK_TASK_INDEX (env     NAME-node-0.NAME
           (gang: minAvailable = nodes)         plugin; svc plugin)
jobset     jobset.x-k8s.io/v1alpha2 JobSet      JOB_COMPLETION_INDEX   NAME-node-0-0.NAME
           (Kueue: created suspended)
job        batch/v1 Indexed Job + Service       JOB_COMPLETION_INDEX   NAME-0.NAME
=========  ===================================  =====================  ==========================

The job's ConfigMap carries the plan (``plan.json``) and, with ``code=package``, the working
directory (``code.tar.gz``, packed at submit: the only part not rendered here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from corral.errors import SpecError
from corral.launchers import NodeContext
from corral.launchers.base import SHIM_NAME
from corral.launchers.nodeplan import entry_in_container, node_entry
from corral.spec import Function, JobSpec

from .options import KubernetesOptions

PACKAGE_DIR = "/opt/corral/package"
RUN_DIR = "/opt/corral/run"
WORK_DIR = "/opt/corral/work"
LOG_DIR = f"{RUN_DIR}/logs"
CONTAINER = "main"
NODE_TASK = "node"  # the task (Volcano) / replicated job (JobSet) of the job's pods
MANAGED_BY = "app.kubernetes.io/managed-by"
JOB_LABEL = "corral.dev/job"
JOB_ID_ANNOTATION = "corral.dev/job-id"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SELECTOR = f"{MANAGED_BY}=corral"
NAME_LENGTH = 40  # leaves room for pod names and hostnames (63) in every flavour

WORKLOADS: dict[str, tuple[str, str]] = {  # flavour -> (apiVersion, kind)
    "volcano": ("batch.volcano.sh/v1alpha1", "Job"),
    "jobset": ("jobset.x-k8s.io/v1alpha2", "JobSet"),
    "job": ("batch/v1", "Job"),
}
NODE_RANK_ENV = {"volcano": "VK_TASK_INDEX", "jobset": "JOB_COMPLETION_INDEX",
                 "job": "JOB_COMPLETION_INDEX"}


def object_name(job_id: str) -> str:
    """A DNS-1035 label for the job's objects: the id's readable start and unique end."""
    slug = re.sub(r"[^a-z0-9]+", "-", job_id.lower()).strip("-") or "job"
    if not slug[:1].isalpha():
        slug = f"c-{slug}"
    if len(slug) > NAME_LENGTH:  # keep the unique end: yymmdd-hhmmss-<6 hex>
        slug = slug[:NAME_LENGTH - 21].rstrip("-") + "-" + slug[-20:]
    return slug


def package_url(store: str, job_id: str) -> str:
    """Where a job's code package goes in object storage."""
    return f"{store.rstrip('/')}/{job_id}/code.tar.gz"


def pod_host(flavour: str, name: str, node: int) -> str:
    """The stable DNS name of a node's pod (``HOSTNAME.SUBDOMAIN``)."""
    if flavour == "volcano":
        return f"{name}-{NODE_TASK}-{node}.{name}"
    if flavour == "jobset":
        return f"{name}-{NODE_TASK}-0-{node}.{name}"
    return f"{name}-{node}.{name}"


@dataclass(frozen=True)
class KubePlan:
    job_id: str
    name: str
    namespace: str
    flavour: str
    run_dir: str  # inside each pod
    workdir: str  # on the submitting machine (packed with code=package)
    package: bool
    manifests: tuple[dict[str, Any], ...]  # in creation order; the workload last
    pod_plan: dict[str, Any]
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    @property
    def workload(self) -> dict[str, Any]:
        return self.manifests[-1]

    @property
    def config_map(self) -> dict[str, Any]:
        return self.manifests[0]

    def dry_run_text(self) -> str:
        shown = []
        for manifest in self.manifests:
            if manifest["kind"] == "ConfigMap" and self.package and "package_url" not in (
                    self.pod_plan):
                manifest = {**manifest, "binaryData": {
                    "code.tar.gz": f"<{self.workdir}, packed at submit>"}}
            shown.append(to_yaml(manifest))
        head = [f"# corral job {self.job_id}: {self.flavour} in namespace {self.namespace}"]
        head += [f"# warning: {w}" for w in self.warnings]
        head += [f"# note: {n}" for n in self.notes]
        return "\n".join(head) + "\n---\n" + "---\n".join(shown)


def to_yaml(manifest: dict[str, Any]) -> str:
    """A manifest as YAML, multi-line strings (the plan) as readable blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(manifest, Dumper=Dumper, sort_keys=False, width=100)


def _metadata(name: str, namespace: str, job_id: str, options: KubernetesOptions,
              extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    labels = {**options.labels, MANAGED_BY: "corral", JOB_LABEL: name, **(extra_labels or {})}
    return {"name": name, "namespace": namespace, "labels": labels,
            "annotations": {**options.annotations, JOB_ID_ANNOTATION: job_id}}


def _quantity(cpus: float) -> str:
    return str(int(cpus)) if float(cpus).is_integer() else f"{round(cpus * 1000)}m"


def _resources(spec: JobSpec) -> dict[str, Any]:
    """Per pod (= per node): the spec's resources are per node."""
    res = spec.resources
    amounts: dict[str, str] = {}
    if res.cpus:
        amounts["cpu"] = _quantity(res.cpus)
    if res.memory_mb:
        amounts["memory"] = f"{res.memory_mb}Mi"
    if res.gpus:
        amounts["nvidia.com/gpu"] = str(res.whole_gpus("kubernetes"))
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def _volumes(name: str, options: KubernetesOptions) -> tuple[list[dict[str, Any]],
                                                            list[dict[str, Any]]]:
    shm: dict[str, Any] = {"medium": "Memory"}
    if options.shm_size:
        shm["sizeLimit"] = options.shm_size
    volumes: list[dict[str, Any]] = [
        {"name": "corral-package", "configMap": {"name": f"{name}-corral"}},
        {"name": "corral-run", "emptyDir": {}},
        {"name": "dshm", "emptyDir": shm},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "corral-package", "mountPath": PACKAGE_DIR, "readOnly": True},
        {"name": "corral-run", "mountPath": RUN_DIR},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    if options.code == "package":
        volumes.append({"name": "corral-work", "emptyDir": {}})
        mounts.append({"name": "corral-work", "mountPath": WORK_DIR})
    for i, vol in enumerate(options.volumes):
        vol_name = f"vol-{i}"
        sources: dict[str, dict[str, Any]] = {
            "pvc": {"persistentVolumeClaim": {"claimName": vol.source,
                                              "readOnly": vol.read_only}},
            "secret": {"secret": {"secretName": vol.source}},
            "configmap": {"configMap": {"name": vol.source}},
            "hostpath": {"hostPath": {"path": vol.source}},
            "emptydir": {"emptyDir": {}},
        }
        volumes.append({"name": vol_name, **sources[vol.kind]})
        mount: dict[str, Any] = {"name": vol_name, "mountPath": vol.mount_path}
        if vol.read_only:
            mount["readOnly"] = True
        mounts.append(mount)
    taken = [m["mountPath"] for m in mounts]
    clash = sorted({p for p in taken if taken.count(p) > 1})
    if clash:
        raise SpecError([("kubernetes.volumes", clash[0], "two volumes mount at this path; "
                          "corral mounts " + ", ".join(taken[:4]))])
    return volumes, mounts


def pod_spec(spec: JobSpec, options: KubernetesOptions, name: str, image: str,
             workdir: str, subdomain: str | None) -> dict[str, Any]:
    volumes, mounts = _volumes(name, options)
    container: dict[str, Any] = {
        "name": CONTAINER, "image": image,
        "command": [options.python, "-m", "corral.runtime.pod", f"{PACKAGE_DIR}/plan.json"],
        "workingDir": workdir,
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
        "volumeMounts": mounts,
    }
    if options.image_pull_policy:
        container["imagePullPolicy"] = options.image_pull_policy
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": options.termination_grace,
        "containers": [container],
        "volumes": volumes,
    }
    if subdomain:
        pod["subdomain"] = subdomain
    if options.node_selector:
        pod["nodeSelector"] = dict(options.node_selector)
    if options.tolerations:
        pod["tolerations"] = [t.manifest() for t in options.tolerations]
    if options.service_account:
        pod["serviceAccountName"] = options.service_account
    if options.priority_class:
        pod["priorityClassName"] = options.priority_class
    if options.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in options.image_pull_secrets]
    return pod


def _pod_template(meta: dict[str, Any], pod: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"labels": dict(meta["labels"]),
                         "annotations": dict(meta["annotations"])}, "spec": pod}


def _through_corral_rsh(proc: dict[str, Any], options: KubernetesOptions,
                        token: str) -> dict[str, Any]:
    """Open MPI's mpirun, told to start its daemons in the other pods through corral's
    remote shell (the pods run no sshd), one daemon per pod, straight from node 0."""
    argv = proc["argv"]
    mca = ["--mca", "plm_rsh_agent", f"{options.python} -m corral.runtime.rsh",
           "--mca", "plm_rsh_no_tree_spawn", "1",
           # the daemon stays in the foreground: the pod lives as long as it does
           "--mca", "orte_leave_session_attached", "1"]
    env = {**proc["env"], "CORRAL_RSH_TOKEN": token,
           "CORRAL_RSH_PORT": str(options.master_port + 1),
           # pods often run as root; mpirun refuses that unless told
           "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    return {**proc, "argv": [argv[0], *mca, *_reporting_shim(argv[1:])], "env": env}


# A failing rank says so on the stream that mpirun collects (fd 3: its stderr before the
# shim sends its output to the rank's log), so node 0's log names it even when Open MPI's own
# report ("The first process to do so was...") does not come, as happens when mpirun aborts
# a job whose daemons are going away in other pods.
_REPORT_TAIL = ('"$@"; rc=$?; if [ "$rc" -ne 0 ]; then '
                'echo "corral: rank $RANK exited with code $rc" >&3; fi; exit "$rc"')


def _reporting_shim(argv: list[str]) -> list[str]:
    """The rank shim of mpirun's argv, made to report a failing rank (see _REPORT_TAIL)."""
    for i in range(len(argv) - 3):
        if argv[i:i + 2] == ["sh", "-c"] and argv[i + 3] == SHIM_NAME:
            script = "exec 3>&2; " + argv[i + 2].replace('exec "$@"', _REPORT_TAIL)
            return [*argv[:i + 2], script, *argv[i + 3:]]
    return argv


def node_plans(spec: JobSpec, options: KubernetesOptions, flavour: str, name: str,
               job_id: str, rsh_token: str = "") -> list[dict[str, Any]]:
    """Every node's processes, as the node agent takes them."""
    hosts = tuple(pod_host(flavour, name, i) for i in range(spec.nodes))
    nodes = []
    for node_rank in range(spec.nodes):
        ctx = NodeContext(
            node_rank=node_rank, hosts=hosts, master_port=options.master_port, rdzv_id=job_id,
            run_dir=RUN_DIR, job_id=job_id, backend="kubernetes", python=options.python,
            log_dir=None if spec.launcher == "none" else LOG_DIR)
        entry = node_entry(spec, ctx)
        if spec.launcher == "mpirun":
            entry["processes"] = [_through_corral_rsh(p, options, rsh_token)
                                  for p in entry["processes"]]
        nodes.append(entry)
    return nodes


def check(spec: JobSpec, options: KubernetesOptions) -> tuple[str, list[str]]:
    """The image to run, and warnings; what Kubernetes cannot do is refused here."""
    image = options.image or spec.image
    if not image:
        raise SpecError([("image", None, "the kubernetes backend needs a container image with "
                          "Python and corral installed: --image IMAGE (or -o image=IMAGE)")])
    if spec.launcher == "mpirun" and spec.mpi != "openmpi":
        raise SpecError([("mpi", spec.mpi, "on kubernetes, mpirun is Open MPI's (its daemons "
                          "reach the other pods through corral's remote shell); accepted: "
                          "openmpi")])
    warnings = []
    if options.flavour == "job":
        warnings.append("flavour 'job' (a plain Indexed Job): nothing guarantees that all "
                        f"{spec.nodes} pods start together; use volcano or jobset + Kueue "
                        "for a gang start")
    if spec.priority and not options.priority_class:
        warnings.append(f"priority {spec.priority} has no meaning on Kubernetes by itself: "
                        "give -o priority_class=NAME (a PriorityClass of the cluster)")
    return image, warnings


def render(spec: JobSpec, *, job_id: str, options: KubernetesOptions,
           local_workdir: str, rsh_token: str = "") -> KubePlan:
    """The job's objects. ``rsh_token`` (random, from the caller) lets mpirun's daemons into
    the job's other pods."""
    flavour = options.flavour
    image, warnings = check(spec, options)
    name = object_name(job_id)
    namespace = options.namespace
    package = options.code == "package"
    workdir = WORK_DIR if package else options.image_workdir
    if package:
        spec = entry_in_container(spec, local_workdir, workdir)
    queue = spec.queue
    kueue = options.kueue_queue or (queue if flavour != "volcano" else None)
    extra = {KUEUE_QUEUE_LABEL: kueue} if kueue else {}
    meta = _metadata(name, namespace, job_id, options, extra)
    base_meta = _metadata(name, namespace, job_id, options)
    pod_plan = {
        "job_id": job_id, "node_rank_env": NODE_RANK_ENV[flavour], "run_dir": RUN_DIR,
        "log_dir": LOG_DIR, "workdir": workdir, "package": package,
        "grace": max(1, options.termination_grace - 2),
        "nodes": node_plans(spec, options, flavour, name, job_id, rsh_token),
    }
    if spec.launcher == "mpirun":
        pod_plan["rsh"] = {"port": options.master_port + 1, "token": rsh_token}
    if package and options.package_store:
        pod_plan["package_url"] = package_url(options.package_store, job_id)
    import json

    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {**base_meta, "name": f"{name}-corral"},
                  "data": {"plan.json": json.dumps(pod_plan, indent=1)}}
    manifests: list[dict[str, Any]] = [config_map]
    pod = pod_spec(spec, options, name, image, workdir,
                   subdomain=name if flavour == "job" else None)
    deadline = int(spec.time_limit) if spec.time_limit else None
    if flavour == "volcano":
        if deadline:
            pod["activeDeadlineSeconds"] = deadline
        workload: dict[str, Any] = {
            "apiVersion": WORKLOADS[flavour][0], "kind": "Job", "metadata": meta,
            "spec": {
                "schedulerName": "volcano", "minAvailable": spec.nodes,
                "queue": options.queue or queue or "default", "maxRetry": 0,
                "plugins": {"svc": [], "env": []},
                "policies": [{"event": "PodFailed", "action": "TerminateJob"},
                             {"event": "PodEvicted", "action": "TerminateJob"}],
                "tasks": [{"name": NODE_TASK, "replicas": spec.nodes,
                           "template": _pod_template(base_meta, pod)}],
            }}
        if options.priority_class:
            workload["spec"]["priorityClassName"] = options.priority_class
    else:
        job_spec: dict[str, Any] = {
            "completionMode": "Indexed", "completions": spec.nodes,
            "parallelism": spec.nodes, "backoffLimit": 0,
            "template": _pod_template(base_meta, pod)}
        if deadline:
            job_spec["activeDeadlineSeconds"] = deadline
        if flavour == "job":
            manifests.append({
                "apiVersion": "v1", "kind": "Service", "metadata": base_meta,
                "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                         "selector": {JOB_LABEL: name},
                         "ports": [{"name": "rendezvous", "port": options.master_port}]}})
            if kueue:
                job_spec["suspend"] = True
            workload = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
                        "spec": job_spec}
        else:
            workload = {
                "apiVersion": WORKLOADS[flavour][0], "kind": "JobSet", "metadata": meta,
                "spec": {
                    "network": {"enableDNSHostnames": True, "subdomain": name,
                                "publishNotReadyAddresses": True},
                    "failurePolicy": {"maxRestarts": 0},
                    "replicatedJobs": [{"name": NODE_TASK, "replicas": 1, "template": {
                        "metadata": {"labels": dict(base_meta["labels"])},
                        "spec": job_spec}}],
                }}
            if kueue:
                workload["spec"]["suspend"] = True
    manifests.append(workload)
    notes = []
    if isinstance(spec.entrypoint, Function):
        notes.append("the function and its arguments travel in the job's ConfigMap")
    return KubePlan(job_id=job_id, name=name, namespace=namespace, flavour=flavour,
                    run_dir=RUN_DIR, workdir=local_workdir, package=package,
                    manifests=tuple(manifests), pod_plan=pod_plan, notes=tuple(notes),
                    warnings=tuple(warnings))
