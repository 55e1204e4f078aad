"""The Kubernetes backend on a real control plane (kube-apiserver, controller-manager and
scheduler 1.36, Volcano, Kueue, JobSet; tests/infra/k8s_cluster.py) whose pods run as real
processes, each in a network namespace of its own, on fake kubelets."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import PROGRAMS, read_rank_outputs
from corral.backends.kubernetes import KubernetesBackend, KubernetesOptions
from corral.backends.kubernetes.api import KINDS, ApiError, KubeApi
from corral.backends.kubernetes.queues import QueueSpec, create_queue, delete_queue
from corral.backends.kubernetes.render import SELECTOR
from corral.errors import SubmitError
from corral.spec import JobSpec, JobState
from corral.status import JobStatus

pytestmark = [pytest.mark.k8s, pytest.mark.usefixtures("k8s_cluster")]
POD = KINDS[("v1", "Pod")]
CONFIG_MAP = KINDS[("v1", "ConfigMap")]
IMAGE = "corral-test:latest"  # the fake kubelet runs the host's Python instead of images


@pytest.fixture
def admin(k8s_cluster: Any) -> KubeApi:
    return KubeApi(str(k8s_cluster.kubeconfig))


def backend(flavour: str = "volcano", **options: Any) -> KubernetesBackend:
    return KubernetesBackend(KubernetesOptions(
        flavour=flavour, poll_seconds=0.2, termination_grace=5, **options))


def program(script: str, *args: str, **fields: Any) -> JobSpec:
    fields.setdefault("name", script.removesuffix(".py").replace("_", "-"))
    return JobSpec(entrypoint={"kind": "script", "path": script}, args=list(args),
                   workdir=str(PROGRAMS), image=IMAGE, **fields)


def command(text: str, **fields: Any) -> JobSpec:
    fields.setdefault("name", "sh")
    return JobSpec(entrypoint={"kind": "command", "argv": ["sh", "-c", text]},
                   workdir=str(PROGRAMS), image=IMAGE, **fields)


def wait_for(kube: KubernetesBackend, job_id: str, done: Callable[[JobStatus], bool],
             timeout: float = 90) -> JobStatus:
    deadline = time.monotonic() + timeout
    while not done(status := kube.describe(job_id)):
        assert time.monotonic() < deadline, status.summary()
        time.sleep(0.2)
    return status


def pods_of(api: KubeApi, kube: KubernetesBackend, job_id: str) -> list[dict[str, Any]]:
    name = kube.store.get(job_id).engine_id
    return api.list(POD, "default", f"{SELECTOR},corral.dev/job={name}")


def check_ddp(kube: KubernetesBackend, admin: KubeApi, out: Path) -> None:
    ref = kube.submit(program("ddp_allreduce.py", str(out), nodes=2, procs_per_node=2,
                              launcher="torchrun"))
    status = kube.wait(ref.job_id, timeout=240)
    assert status.state is JobState.SUCCEEDED, status.summary()
    ranks = read_rank_outputs(out)
    assert sorted(ranks) == [0, 1, 2, 3]
    assert all(r["sum"] == [10.0] * 4 for r in ranks.values())
    hosts = {r["env"]["NODE_RANK"]: r["host"] for r in ranks.values()}
    assert len(set(hosts.values())) == 2  # two pods, two hostnames
    pods = pods_of(admin, kube, ref.job_id)
    assert len({p["status"]["podIP"] for p in pods}) == 2  # two network namespaces
    assert {p["spec"].get("hostname") or p["metadata"]["name"] for p in pods} == set(
        hosts.values())
    lines = [text for _, text in kube.logs(ref.job_id, rank=3)]
    assert "rank 3/4 sum 10" in lines, lines
    assert [r.state for r in status.ranks] == [JobState.SUCCEEDED] * 4


def test_volcano_ddp_two_pods_two_ranks(admin: KubeApi, tmp_path: Path) -> None:
    check_ddp(backend("volcano"), admin, tmp_path)


def test_jobset_with_kueue_ddp_two_pods_two_ranks(admin: KubeApi, tmp_path: Path) -> None:
    create_queue(admin, QueueSpec(name="ddp-queue", cpu="8", memory="16Gi"), kueue=True)
    try:
        check_ddp(backend("jobset", kueue_queue="ddp-queue"), admin, tmp_path)
    finally:
        delete_queue(admin, "ddp-queue", "default", kueue=True)


def test_open_mpi_across_pods_through_corrals_remote_shell(tmp_path: Path) -> None:
    kube = backend("volcano")
    ref = kube.submit(program("mpi_allreduce.py", str(tmp_path), nodes=2, procs_per_node=2,
                              launcher="mpirun"))
    status = kube.wait(ref.job_id, timeout=180)
    assert status.state is JobState.SUCCEEDED, status.summary()
    ranks = read_rank_outputs(tmp_path)
    assert sorted(ranks) == [0, 1, 2, 3]
    for rank, record in ranks.items():
        assert record["sum"] == 10 and record["mpi_size"] == 4
        assert record["env"]["NODE_RANK"] == str(rank // 2)
    lines = [text for _, text in kube.logs(ref.job_id, rank=3)]  # from node 1's pod
    assert lines, "rank 3's lines are missing from its pod's log"


def test_a_failing_mpi_rank_in_another_pod_is_named(admin: KubeApi) -> None:
    kube = backend("volcano")
    ref = kube.submit(command('echo "rank $RANK up"; [ "$RANK" = 3 ] && exit 3; sleep 60',
                              nodes=2, procs_per_node=2, launcher="mpirun", name="mpifail"))
    status = kube.wait(ref.job_id, timeout=120)
    assert status.state is JobState.FAILED, status.summary()
    assert status.failure is not None and status.failure.rank == 3, status.summary()
    assert status.failure.returncode == 3 and status.failure.node == 1
    assert "-node-1 on node node" in status.summary(), status.summary()


def test_plain_job_submit_describe_logs_cancel(admin: KubeApi) -> None:
    kube = backend("job")
    ref = kube.submit(command('echo "hello from $RANK"; sleep 300', nodes=2))
    # the two pods start independently: wait for both ranks' lines, not for rank 1's alone
    status = wait_for(kube, ref.job_id, lambda s: s.state is JobState.RUNNING and {
        "hello from 0", "hello from 1"} <= {t for _, t in kube.logs(ref.job_id)})
    assert any("pod " in note for note in status.notes)
    lines = {(s.kind, s.number, t) for s, t in kube.logs(ref.job_id)}
    assert ("rank", 0, "hello from 0") in lines and ("rank", 1, "hello from 1") in lines
    status = kube.cancel(ref.job_id)
    assert status.state is JobState.CANCELLED, status.summary()
    assert kube.cancel(ref.job_id).state is JobState.CANCELLED  # idempotent
    name = kube.store.get(ref.job_id).engine_id
    deadline = time.monotonic() + 30
    while pods_of(admin, kube, ref.job_id) or admin.list(
            CONFIG_MAP, "default", f"corral.dev/job={name}"):
        assert time.monotonic() < deadline, "pods or the ConfigMap left after the cancel"
        time.sleep(0.5)


def test_failing_rank_is_named_with_its_pod_and_node(admin: KubeApi) -> None:
    kube = backend("volcano")
    ref = kube.submit(command('[ "$RANK" = 3 ] && { echo "boom on 3"; exit 3; }; sleep 60',
                              nodes=2, procs_per_node=2, name="fails"))
    status = kube.wait(ref.job_id, timeout=120)
    assert status.state is JobState.FAILED, status.summary()
    assert status.failure is not None and status.failure.rank == 3
    assert status.failure.returncode == 3 and status.failure.node == 1
    summary = status.summary()
    (pod,) = [p for p in pods_of(admin, kube, ref.job_id) if p["metadata"]["name"].endswith(
        "-node-1")]
    assert "rank 3" in summary, summary
    assert f"pod {pod['metadata']['name']} on node {pod['spec']['nodeName']}" in summary, summary
    assert "boom on 3" in status.failure.last_lines


def test_volcano_gang_that_does_not_fit_waits_with_the_reason(admin: KubeApi) -> None:
    kube = backend("volcano")
    ref = kube.submit(command("echo never", nodes=2, resources={"cpus": 64}, name="too-big"))
    status = wait_for(kube, ref.job_id, lambda s: "overused cpu" in s.reason
                      or "Insufficient cpu" in s.reason, timeout=60)  # the real cause, in time
    assert status.state is JobState.PENDING, status.summary()
    assert status.reason.startswith("Volcano: pod group Pending, unschedulable: "), status.reason
    time.sleep(2)
    assert not [p for p in pods_of(admin, kube, ref.job_id)
                if p["status"].get("phase") != "Pending" or p["spec"].get("nodeName")]
    assert kube.cancel(ref.job_id).state is JobState.CANCELLED


def test_kueue_holds_a_job_over_its_quota(admin: KubeApi) -> None:
    create_queue(admin, QueueSpec(name="small", cpu="1", memory="1Gi"), kueue=True)
    try:
        kube = backend("jobset", kueue_queue="small")
        ref = kube.submit(command("echo never", nodes=2, resources={"cpus": 1}, name="held"))
        status = wait_for(kube, ref.job_id, lambda s: "Kueue" in s.reason and "small" in
                          s.reason, timeout=60)
        assert status.state is JobState.PENDING, status.summary()
        assert pods_of(admin, kube, ref.job_id) == []
        assert kube.cancel(ref.job_id).state is JobState.CANCELLED
    finally:
        delete_queue(admin, "small", "default", kueue=True)


def test_no_rights_is_a_clear_error_and_nothing_is_left(k8s_cluster: Any,
                                                        admin: KubeApi) -> None:
    kube = KubernetesBackend(KubernetesOptions(
        flavour="job", kubeconfig=str(k8s_cluster.restricted_kubeconfig)))
    spec = command("true", name="nobody")
    with pytest.raises(SubmitError, match="403") as caught:
        kube.submit(spec)
    assert "not allowed" in str(caught.value)
    (record,) = kube.store.jobs("kubernetes")
    assert record.state is JobState.FAILED and "403" in record.reason
    assert admin.list(CONFIG_MAP, "default", SELECTOR + ",corral.dev/job=" + (
        record.details or {}).get("name", "")) == []


def test_a_rejected_token_is_a_clear_error(k8s_cluster: Any, tmp_path: Path) -> None:
    import re

    text = Path(k8s_cluster.restricted_kubeconfig).read_text()
    stale = tmp_path / "kubeconfig"
    stale.write_text(re.sub(r"token: .*", "token: not-a-token-anyone-knows", text))
    kube = KubernetesBackend(KubernetesOptions(flavour="job", kubeconfig=str(stale)))
    with pytest.raises(SubmitError, match="401 Unauthorized"):
        kube.submit(command("true", name="stale"))


def test_missing_namespace_and_invalid_objects_are_clear_errors(admin: KubeApi) -> None:
    with pytest.raises(SubmitError, match="no-such-namespace"):
        backend("job", namespace="no-such-namespace").submit(command("true"))
    bad = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "Bad_Name", "namespace": "default"}}
    with pytest.raises(ApiError) as caught:
        admin.create(bad)
    assert caught.value.status == 422 and "metadata.name" in str(caught.value)


@pytest.mark.parametrize("flavour", ["volcano", "jobset", "job"])
def test_server_side_dry_run_accepts_every_object(admin: KubeApi, flavour: str) -> None:
    kube = backend(flavour, kueue_queue="any" if flavour != "volcano" else None,
                   node_selector=["disktype=ssd"], tolerations=["gpu=true:NoSchedule"],
                   volumes=["pvc:data:/data", "secret:creds:/etc/creds:ro"], shm_size="1Gi")
    plan = kube.render(program("ddp_allreduce.py", "/tmp", nodes=2, procs_per_node=2,
                               launcher="torchrun", time_limit=600,
                               resources={"cpus": 2, "memory": "1G"}))
    for manifest in plan.manifests:
        created = admin.create(manifest, dry_run=True)
        assert created["metadata"]["name"] == manifest["metadata"]["name"]


def test_cli_run_streams_labelled_ranks_and_ps_lists_it(k8s_cluster: Any,
                                                         tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(k8s_cluster.kubeconfig)}
    done = subprocess.run(
        [sys.executable, "-m", "corral.cli", "run", "--backend", "kubernetes", "--image", IMAGE,
         "-o", "flavour=job", "-o", "poll_seconds=0.2", "--nodes", "2",
         "echo_args.py", "--", str(tmp_path), "x y"], cwd=PROGRAMS, env=env,
        capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "args: ['x y']" in done.stdout and "r1]" in done.stdout, done.stdout
    records = read_rank_outputs(tmp_path)
    assert sorted(records) == [0, 1]
    assert records[1]["job"]["num_nodes"] == 2 and records[1]["job"]["node_rank"] == 1
    listed = subprocess.run([sys.executable, "-m", "corral.cli", "ps", "-a"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert "kubernetes" in listed.stdout and "SUCCEEDED" in listed.stdout, listed.stdout


def test_time_limit_ends_the_job_as_timeout(admin: KubeApi) -> None:
    kube = backend("job")
    ref = kube.submit(command("sleep 120", nodes=2, time_limit=3, name="slow"))
    status = kube.wait(ref.job_id, timeout=60)
    assert status.state is JobState.TIMEOUT, status.summary()
    assert "time limit" in status.reason


def test_distributed_function_returns_every_rank_through_the_pod_logs(k8s_cluster: Any) -> None:
    import corral

    def rank_plus(x: int) -> tuple[int, str]:
        import os
        import socket

        return int(os.environ["RANK"]) + x, socket.gethostname()

    remote = corral.distributed(rank_plus, nodes=2, procs_per_node=2, launcher="none",
                                all_ranks=True, backend=backend("volcano"), stream=False,
                                image=IMAGE, workdir=str(PROGRAMS))
    results = remote(10)
    assert [value for value, _ in results] == [10, 11, 12, 13]
    assert len({host for _, host in results}) == 2


def test_cancel_reaches_every_rank_gracefully_and_leaves_no_process(tmp_path: Path) -> None:
    import psutil

    kube = backend("volcano")
    trap = (f'trap \'echo TERM > {tmp_path}/rank-$RANK.term; exit 0\' TERM; '
            'echo ready; sleep 300 & wait')
    ref = kube.submit(command(trap, nodes=2, procs_per_node=2, name="graceful"))
    wait_for(kube, ref.job_id, lambda s: sum(
        t == "ready" for _, t in kube.logs(ref.job_id)) == 4)
    assert kube.cancel(ref.job_id).state is JobState.CANCELLED
    # the kubelet signals each pod's main process only: corral's pod entry passes it on
    assert sorted(p.name for p in tmp_path.glob("*.term")) == [
        f"rank-{r}.term" for r in range(4)]

    def leftovers() -> list[int]:
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.environ().get("CORRAL_JOB_ID") == ref.job_id:
                    found.append(proc.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    deadline = time.monotonic() + 15
    while leftovers():
        assert time.monotonic() < deadline, leftovers()
        time.sleep(0.5)


def test_a_large_code_package_travels_through_object_storage(tmp_path: Path) -> None:
    """fsspec's local filesystem stands in for S3/GCS here: the pods share the host's disk."""
    work = tmp_path / "project"
    work.mkdir()
    (work / "weights.bin").write_bytes(os.urandom(1500 * 1024))  # over a ConfigMap's limit
    (work / "check.py").write_text(
        "import os\nprint('weights', os.path.getsize('weights.bin'))\n")
    store = f"file://{tmp_path}/store"
    kube = backend("job", package_store=store)
    ref = kube.submit(JobSpec(entrypoint={"kind": "script", "path": "check.py"},
                              workdir=str(work), image=IMAGE, nodes=2, name="big"))
    status = kube.wait(ref.job_id, timeout=120)
    assert status.state is JobState.SUCCEEDED, status.summary()
    assert [t for _, t in kube.logs(ref.job_id, rank=1)] == [f"weights {1500 * 1024}"]
    assert (tmp_path / "store" / ref.job_id / "code.tar.gz").stat().st_size > 1500 * 1024
    with pytest.raises(SubmitError, match="package_store"):
        backend("job").submit(JobSpec(entrypoint={"kind": "script", "path": "check.py"},
                                      workdir=str(work), image=IMAGE, name="too-big"))


SUBMITTER = '''
import os, sys
from corral.backends.kubernetes import KubernetesBackend, KubernetesOptions, api
from corral.spec import JobSpec

moment, workdir = sys.argv[1], sys.argv[2]
real_create = api.KubeApi.create

def create(self, manifest, dry_run=False):
    if moment == "before" or (moment == "during" and manifest["kind"] == "Job"):
        os._exit(9)  # the submitter dies before this object reaches the API server
    created = real_create(self, manifest, dry_run)
    if moment == "after" and manifest["kind"] == "Job":
        os._exit(9)  # ... after the workload exists, before its id is recorded
    return created

api.KubeApi.create = create
kube = KubernetesBackend(KubernetesOptions(flavour="job", poll_seconds=0.2))
kube.submit(JobSpec(name="crash-" + moment, entrypoint={"kind": "command", "argv": ["true"]},
                    workdir=workdir, image="corral-test:latest"))
'''


@pytest.mark.parametrize("moment", ["before", "during", "after"])
def test_killed_submitter_is_reconciled_without_duplicates(admin: KubeApi, tmp_path: Path,
                                                           moment: str) -> None:
    import json

    done = subprocess.run([sys.executable, "-c", SUBMITTER, moment, str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 9, done.stderr  # the submitter really died
    kube = backend("job")
    [record] = kube.store.jobs("kubernetes", live=True)
    assert record.state is JobState.SUBMITTING and record.engine_id is None
    time.sleep(3.5)
    env = {**os.environ, "CORRAL_SUBMIT_GRACE": "3"}
    listed = subprocess.run([sys.executable, "-m", "corral.cli", "ps", "-a", "--json"],
                            capture_output=True, text=True, env=env, timeout=60, check=False)
    assert listed.returncode == 0, listed.stderr
    [shown] = [j for j in json.loads(listed.stdout) if j["job_id"] == record.id]
    jobs = [j for j in admin.list(KINDS[("batch/v1", "Job")], "default", SELECTOR)
            if j["metadata"]["annotations"].get("corral.dev/job-id") == record.id]
    if moment in ("before", "during"):
        assert shown["state"] == "FAILED" and "submission lost" in shown["reason"], shown
        assert jobs == []
        name = (record.details or {})["name"]  # what it had created is gone too
        assert admin.list(CONFIG_MAP, "default", f"{SELECTOR},corral.dev/job={name}") == []
    else:
        assert len(jobs) == 1  # adopted, never created twice
        adopted = kube.store.get(record.id)
        assert adopted.engine_id == jobs[0]["metadata"]["name"]
        assert "adopted" in " ".join(e.reason for e in kube.store.events(record.id))
        assert kube.wait(record.id, timeout=60).state is JobState.SUCCEEDED
