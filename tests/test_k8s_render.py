"""The Kubernetes backend without a cluster: rendered manifests checked against the API's
own schemas (kubernetes-validate, strict) and the CRDs of Volcano and JobSet, the pod entry
point run as real processes, options and their errors, log parsing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from corral.backends.kubernetes.observe import pod_index
from corral.backends.kubernetes.options import KubernetesOptions
from corral.backends.kubernetes.render import object_name, pod_host, render
from corral.codepackage import pack
from corral.errors import SpecError, SubmitError
from corral.nodelog import first_exit, parse_pod_log
from corral.spec import JobSpec

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CORRAL_SHARED", REPO.parent / "shared"))
CRDS = SHARED / "crds"
FLAVOURS = ("volcano", "jobset", "job")


def spec(**fields: Any) -> JobSpec:
    base: dict[str, Any] = {"name": "train", "entrypoint": {"kind": "script", "path": "train.py"},
                            "nodes": 2, "procs_per_node": 2, "launcher": "torchrun",
                            "image": "python:3.11", "resources": {"cpus": 2, "memory": "4G"}}
    return JobSpec(**{**base, **fields})


def plan_for(flavour: str, job_spec: JobSpec | None = None, **options: Any):  # type: ignore[no-untyped-def]
    return render(job_spec or spec(), job_id="train-261129-101010-abcdef",
                  options=KubernetesOptions(flavour=flavour, **options),
                  local_workdir="/home/me/project")


# -- schemas ---------------------------------------------------------------------------------

def _crd_schema(path: Path, version: str) -> dict[str, Any]:
    import yaml

    crd = yaml.safe_load(path.read_text())
    (found,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema: dict[str, Any] = found["schema"]["openAPIV3Schema"]
    return schema


def _unknown_fields(value: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """Fields the API server would silently drop (structural schemas prune unknown ones)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key not in schema["properties"]:
                found.append(f"{where}.{key}")
            else:
                found += _unknown_fields(item, schema["properties"][key], f"{where}.{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            found += _unknown_fields(item, schema["additionalProperties"], f"{where}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += _unknown_fields(item, schema["items"], f"{where}[{i}]")
    return found


def check_against_crd(manifest: dict[str, Any], crd_file: Path, version: str) -> None:
    import jsonschema

    if not crd_file.exists():
        pytest.skip(f"{crd_file} is absent: the CRD schemas come from ../shared/crds")
    schema = _crd_schema(crd_file, version)
    jsonschema.validate(manifest, schema)
    assert _unknown_fields(manifest, schema) == []


def check_core(manifest: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(manifest, "1.36", strict=True)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_manifest_is_valid_for_its_schema(flavour: str) -> None:
    plan = plan_for(flavour, kueue_queue="team-a" if flavour != "volcano" else None,
                    node_selector=["disktype=ssd"], tolerations=["gpu=true:NoSchedule"],
                    volumes=["pvc:data:/data", "secret:creds:/etc/creds:ro"],
                    service_account="trainer", priority_class="high", shm_size="2Gi")
    kinds = []
    for manifest in plan.manifests:
        kinds.append(manifest["kind"])
        api_version = manifest["apiVersion"]
        if api_version in ("v1", "batch/v1"):
            check_core(manifest)
        elif api_version == "batch.volcano.sh/v1alpha1":
            check_against_crd(manifest, CRDS / "volcano" / "batch.volcano.sh_jobs.yaml",
                              "v1alpha1")
        elif api_version == "jobset.x-k8s.io/v1alpha2":
            check_against_crd(manifest, CRDS / "jobset" / "jobset.x-k8s.io_jobsets.yaml",
                              "v1alpha2")
        else:
            raise AssertionError(f"unchecked kind {api_version} {manifest['kind']}")
    expected = {"volcano": ["ConfigMap", "Job"], "jobset": ["ConfigMap", "JobSet"],
                "job": ["ConfigMap", "Service", "Job"]}[flavour]
    assert kinds == expected


def test_an_unknown_field_is_caught_by_the_schema_check() -> None:
    plan = plan_for("volcano")
    broken = json.loads(json.dumps(plan.workload))
    broken["spec"]["minAvailble"] = 2
    with pytest.raises(AssertionError):
        check_against_crd(broken, CRDS / "volcano" / "batch.volcano.sh_jobs.yaml", "v1alpha1")


def test_a_bad_core_manifest_is_caught() -> None:
    import kubernetes_validate

    plan = plan_for("job")
    broken = json.loads(json.dumps(plan.workload))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        check_core(broken)


# -- what the manifests say -------------------------------------------------------------------

@pytest.mark.parametrize("flavour", FLAVOURS)
def test_rendezvous_is_rank_zeros_stable_name(flavour: str) -> None:
    plan = plan_for(flavour)
    nodes = plan.pod_plan["nodes"]
    host0 = pod_host(flavour, plan.name, 0)
    for node in nodes:
        (proc,) = node["processes"]
        assert proc["env"]["MASTER_ADDR"] == host0
        assert f"{host0}:29500" in proc["argv"]
        assert proc["env"]["CORRAL_HOSTS"].split(",") == [
            pod_host(flavour, plan.name, i) for i in range(2)]
    assert plan.pod_plan["node_rank_env"] == ("VK_TASK_INDEX" if flavour == "volcano"
                                              else "JOB_COMPLETION_INDEX")
    assert all(len(pod_host(flavour, plan.name, i).split(".")[0]) <= 63 for i in range(99))


def test_volcano_job_is_a_gang_in_its_queue() -> None:
    plan = plan_for("volcano", job_spec=spec(queue="research", time_limit=600))
    job = plan.workload["spec"]
    assert job["minAvailable"] == 2 and job["schedulerName"] == "volcano"
    assert job["queue"] == "research"
    assert set(job["plugins"]) == {"svc", "env"}
    (task,) = job["tasks"]
    assert task["replicas"] == 2
    pod = task["template"]["spec"]
    assert pod["activeDeadlineSeconds"] == 600 and pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4096Mi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]


def test_jobset_with_kueue_is_created_suspended_with_its_queue() -> None:
    plan = plan_for("jobset", kueue_queue="team-a")
    assert plan.workload["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert plan.workload["spec"]["suspend"] is True
    plain = plan_for("jobset")
    assert "suspend" not in plain.workload["spec"]


def test_plain_job_warns_about_gangs_and_has_a_headless_service() -> None:
    plan = plan_for("job")
    service = plan.manifests[1]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"corral.dev/job": plan.name}
    assert plan.workload["spec"]["template"]["spec"]["subdomain"] == plan.name
    assert any("gang" in w for w in plan.warnings)
    assert "warning:" in plan.dry_run_text()


def test_script_given_by_absolute_path_runs_from_the_package() -> None:
    plan = plan_for("job", job_spec=spec(entrypoint={"kind": "script",
                                                     "path": "/home/me/project/src/t.py"}))
    argv = plan.pod_plan["nodes"][0]["processes"][0]["argv"]
    assert "/opt/corral/work/src/t.py" in argv


def test_gpus_become_extended_resources() -> None:
    plan = plan_for("job", job_spec=spec(resources={"gpus": 8}))
    resources = plan.workload["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {"nvidia.com/gpu": "8"}


@pytest.mark.parametrize("job_id", [
    "train-261129-101010-abcdef",
    "a-very-long-name-of-an-experiment-that-goes-on-and-on-261129-101010-abcdef",
    "1st-run-261129-101010-abcdef",
    "x" * 40 + "-261129-101010-abcdef",
])
def test_object_names_are_dns_labels_that_keep_the_unique_end(job_id: str) -> None:
    import re

    name = object_name(job_id)
    assert re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", name) and len(name) <= 40
    assert name.endswith("261129-101010-abcdef")


# -- refusals, with the field named ---------------------------------------------------------------

@pytest.mark.parametrize(("options", "field"), [
    ({"flavour": "argo"}, "kubernetes.flavour"),
    ({"namespace": "Team_A"}, "kubernetes.namespace"),
    ({"tolerations": ["gpu=true:Sometimes"]}, "kubernetes.tolerations"),
    ({"volumes": ["nfs:server:/data"]}, "kubernetes.volumes"),
    ({"volumes": ["pvc:data:relative"]}, "kubernetes.volumes"),
    ({"node_selector": ["disktype"]}, "kubernetes.node_selector"),
    ({"labels": {"team": "has spaces"}}, "kubernetes.labels"),
    ({"shm_size": "lots"}, "kubernetes.shm_size"),
    ({"colour": "blue"}, "kubernetes.colour"),
])
def test_bad_options_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        KubernetesOptions(**options)
    assert field in str(caught.value)


def test_options_from_the_command_line_forms() -> None:
    options = KubernetesOptions(node_selector="disktype=ssd", tolerations=":NoSchedule",
                                volumes="hostpath:/srv/data:/data:ro", labels=["a=b", "c=d"])
    assert options.node_selector == {"disktype": "ssd"}
    assert options.tolerations[0].manifest() == {"operator": "Exists", "effect": "NoSchedule"}
    assert options.volumes[0].read_only and options.volumes[0].source == "/srv/data"
    assert options.labels == {"a": "b", "c": "d"}


def test_missing_image_and_mpich_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(SpecError, match="image"):
        plan_for("job", job_spec=spec(image=None))
    with pytest.raises(SpecError, match="openmpi"):
        plan_for("job", job_spec=spec(launcher="mpirun", mpi="mpich"))


def test_mpirun_reaches_the_other_pods_through_corrals_remote_shell() -> None:
    plan = render(spec(launcher="mpirun"), job_id="train-261129-101010-abcdef",
                  options=KubernetesOptions(flavour="volcano"), local_workdir="/home/me/p",
                  rsh_token="secret-token")
    node0, node1 = plan.pod_plan["nodes"]
    assert node1["processes"] == []  # mpirun on node 0 starts node 1's ranks
    (mpirun,) = node0["processes"]
    argv = mpirun["argv"]
    assert argv[0] == "mpirun"
    assert argv[1:3] == ["--mca", "plm_rsh_agent"]
    assert argv[3] == "python3 -m corral.runtime.rsh"
    assert "orte_leave_session_attached" in argv
    assert mpirun["env"]["CORRAL_RSH_TOKEN"] == "secret-token"
    script = argv[argv.index("corral-rank") - 1]  # a failing rank reports itself to mpirun
    assert script.startswith("exec 3>&2; ") and 'rank $RANK exited with code $rc" >&3' in script
    assert plan.pod_plan["rsh"] == {"port": 29501, "token": "secret-token"}
    hostfile = next(iter(node0["files"].values()))
    assert hostfile.split() == [f"{pod_host('volcano', plan.name, 0)}", "slots=2",
                                f"{pod_host('volcano', plan.name, 1)}", "slots=2"]


def test_two_volumes_at_one_path_are_refused() -> None:
    with pytest.raises(SpecError, match="/data"):
        plan_for("job", volumes=["pvc:a:/data", "pvc:b:/data"])


def test_cli_dry_run_prints_yaml_and_takes_list_options(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "train.py").write_text("print('hi')\n")
    done = subprocess.run(
        [sys.executable, "-m", "corral.cli", "run", "--backend", "kubernetes", "--image",
         "python:3.11", "-o", "flavour=job", "-o", "tolerations=gpu:NoSchedule", "--dry-run",
         "--nodes", "2", "train.py"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert [d["kind"] for d in docs] == ["ConfigMap", "Service", "Job"]
    pod = docs[2]["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert json.loads(docs[0]["data"]["plan.json"])["nodes"][1]["node_rank"] == 1


# -- the code package ----------------------------------------------------------------------------

def test_package_is_reproducible_and_leaves_out_excluded_files(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print('hi')\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.bin").write_bytes(b"x" * 1000)
    first, _ = pack(str(tmp_path), exclude=["data/*"])
    second, _ = pack(str(tmp_path), exclude=["data/*"])
    assert first == second
    with tarfile.open(fileobj=BytesIO(first)) as archive:
        assert archive.getnames() == ["train.py"]


def test_a_package_over_the_limit_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(os.urandom(300 * 1024))
    with pytest.raises(SubmitError, match=r"package_exclude.*code=image"):
        pack(str(tmp_path), max_kb=100)


# -- the pod's log ----------------------------------------------------------------------------

def test_pod_log_lines_are_sorted_by_source() -> None:
    lines = ["[corral] node 1 of 2 on host: starting 1 process(es)", "[rank 2] hello",
             "[node 1] torchrun says", "[result 2] AAAA", "stray", "[rank 3] bye",
             "[corral] rank 3 exited with code 7 at 1700000000.500"]
    parsed = [(s.kind, s.number, t) for s, t in parse_pod_log(lines, 1)]
    assert parsed == [("node", 1, "node 1 of 2 on host: starting 1 process(es)"),
                      ("rank", 2, "hello"), ("node", 1, "torchrun says"), ("rank", 3, "bye"),
                      ("node", 1, "rank 3 exited with code 7 at 1700000000.500")]
    assert first_exit(lines, 1) == (1700000000.5, 3, 7)
    assert first_exit(["[corral] the launcher of node 0 exited with code 1 at 5.0"], 0) == (
        5.0, None, 1)


def test_pod_index_reads_either_controllers_mark() -> None:
    assert pod_index({"metadata": {"annotations": {
        "batch.kubernetes.io/job-completion-index": "3"}}}) == 3
    assert pod_index({"metadata": {"annotations": {"volcano.sh/task-index": "1"}}}) == 1
    assert pod_index({"metadata": {"labels": {}}}) is None


# -- the pod entry point, as real processes ------------------------------------------------------

def test_pod_entry_runs_its_node_and_labels_every_line(tmp_path: Path) -> None:
    job = spec(launcher="none", entrypoint={"kind": "command", "argv": ["sh", "-c",
               'echo "hello from $RANK"; [ "$RANK" = 3 ] && exit 7; echo done $RANK']},
               resources={})
    plan = render(job, job_id="t-261129-101010-abcdef",
                  options=KubernetesOptions(flavour="job"), local_workdir=str(tmp_path))
    pod_plan = json.loads(plan.config_map["data"]["plan.json"])
    pod_plan.update(run_dir=str(tmp_path / "run"), log_dir=str(tmp_path / "run/logs"),
                    workdir=str(tmp_path / "work"), package=True)
    package = tmp_path / "package"
    package.mkdir()
    (package / "plan.json").write_text(json.dumps(pod_plan))
    data, _ = pack(str(REPO / "tests" / "programs"))
    (package / "code.tar.gz").write_bytes(data)
    env = {**os.environ, "JOB_COMPLETION_INDEX": "1"}
    done = subprocess.run([sys.executable, "-m", "corral.runtime.pod",
                           str(package / "plan.json")], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 7, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "[rank 2] hello from 2" in lines and "[rank 2] done 2" in lines
    assert "[rank 3] hello from 3" in lines
    assert not any("rank 0" in line or "rank 1]" in line for line in lines)
    assert first_exit(lines, 1)[1:] == (3, 7)  # type: ignore[index]
    assert lines[-1] == "[corral] node 1 done: exit code 7"
    assert any(p.name.endswith(".py") for p in (tmp_path / "work").iterdir())  # unpacked


def test_pod_entry_refuses_a_pod_outside_the_plan(tmp_path: Path) -> None:
    plan = plan_for("job")
    (tmp_path / "plan.json").write_text(plan.config_map["data"]["plan.json"])
    done = subprocess.run([sys.executable, "-m", "corral.runtime.pod", str(tmp_path / "plan.json")],
                          env={**os.environ, "JOB_COMPLETION_INDEX": "5"},
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0 and "JOB_COMPLETION_INDEX is '5'" in done.stderr


# -- queues ----------------------------------------------------------------------------------------

def test_queue_manifests_are_valid_for_their_crds() -> None:
    from corral.backends.kubernetes.queues import QueueSpec, kueue_queue, volcano_queue

    queue = QueueSpec(name="team-a", weight=3, cpu="8", memory="32Gi", gpus=2)
    volcano = volcano_queue(queue)
    check_against_crd(volcano, CRDS / "volcano" / "scheduling.volcano.sh_queues.yaml", "v1beta1")
    assert volcano["spec"]["weight"] == 3
    assert volcano["spec"]["capability"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
    files = {"ResourceFlavor": "kueue.x-k8s.io_resourceflavors.yaml",
             "ClusterQueue": "kueue.x-k8s.io_clusterqueues.yaml",
             "LocalQueue": "kueue.x-k8s.io_localqueues.yaml"}
    manifests = kueue_queue(queue)
    assert [m["kind"] for m in manifests] == list(files)
    for manifest in manifests:
        check_against_crd(manifest, CRDS / "kueue" / files[manifest["kind"]], "v1beta2")
    cluster_queue = manifests[1]["spec"]
    assert cluster_queue["fairSharing"] == {"weight": "3"}
    quota = cluster_queue["resourceGroups"][0]["flavors"][0]["resources"]
    assert {r["name"]: r["nominalQuota"] for r in quota} == {
        "cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}


def test_bad_queue_fields_are_named() -> None:
    from corral.backends.kubernetes.queues import QueueSpec

    with pytest.raises(SpecError) as caught:
        QueueSpec(name="Team_A", weight=0, cpu="lots")
    assert {p[0] for p in caught.value.problems} == {"name", "weight", "cpu"}


# -- what the objects say (observe), as the API server returns them -------------------------

def test_workload_states_of_each_flavour() -> None:
    from corral.backends.kubernetes.observe import workload_state
    from corral.jobstate import JobState

    def vc(phase: str) -> dict[str, Any]:
        return {"status": {"state": {"phase": phase}}}

    def job(kind: str, reason: str = "", suspend: bool = False) -> dict[str, Any]:
        conditions = [{"type": kind, "status": "True", "reason": reason}] if kind else []
        return {"spec": {"suspend": suspend}, "status": {"conditions": conditions}}

    assert workload_state("volcano", vc("Completed"))[0] is JobState.SUCCEEDED
    assert workload_state("volcano", vc("Terminated"))[0] is JobState.FAILED
    assert workload_state("volcano", vc("Aborted"))[0] is JobState.CANCELLED
    assert workload_state("volcano", vc("Running"))[0] is None
    assert workload_state("job", job("Complete"))[0] is JobState.SUCCEEDED
    assert workload_state("jobset", job("Completed"))[0] is JobState.SUCCEEDED
    assert workload_state("job", job("Failed", "BackoffLimitExceeded"))[0] is JobState.FAILED
    assert workload_state("job", job("Failed", "DeadlineExceeded"))[0] is JobState.TIMEOUT
    assert workload_state("jobset", job("", suspend=True))[0] is JobState.PENDING
    assert workload_state("job", job(""))[0] is None


def test_waiting_reasons_from_volcano_kueue_and_the_scheduler() -> None:
    from corral.backends.kubernetes.observe import (
        kueue_reason,
        pending_reason,
        podgroup_reason,
        waiting_trouble,
    )

    group = {"metadata": {"name": "pg-1"}, "status": {"phase": "Pending"}}
    events = [
        {"involvedObject": {"name": "pg-1"}, "reason": "Unschedulable",
         "lastTimestamp": "2026-11-29T10:00:00Z", "message": "old news"},
        {"involvedObject": {"name": "pg-1"}, "reason": "Unschedulable",
         "lastTimestamp": "2026-11-29T10:00:05Z", "message": "overused cpu"},
        {"involvedObject": {"name": "pg-2"}, "reason": "Unschedulable",
         "lastTimestamp": "2026-11-29T10:00:09Z", "message": "someone else's"},
    ]
    assert podgroup_reason(group, events) == (
        "Volcano: pod group Pending, unschedulable: overused cpu; old news")
    assert podgroup_reason(group) == "Volcano: pod group Pending"
    workload = {"spec": {"queueName": "small"}, "status": {"conditions": [
        {"type": "QuotaReserved", "status": "False",
         "message": "couldn't assign flavors to pod set node: insufficient quota for cpu"}]}}
    assert kueue_reason(workload) == ("Kueue: waiting in queue small: couldn't assign flavors "
                                      "to pod set node: insufficient quota for cpu")
    pod = {"status": {"conditions": [{"type": "PodScheduled", "status": "False",
                                      "reason": "Unschedulable",
                                      "message": "0/3 nodes are available: 3 Insufficient cpu."}]}}
    assert pending_reason({0: pod}, 2) == (
        "Unschedulable: 0/3 nodes are available: 3 Insufficient cpu.")
    assert pending_reason({}, 2) == "0 of 2 pods created"
    pulling = {"status": {"containerStatuses": [{"name": "main", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "Back-off pulling image \"nope:1\""}}}]}}
    assert waiting_trouble(pulling) == ("ImagePullBackOff", 'Back-off pulling image "nope:1"')


def test_a_missing_script_or_workdir_is_refused_before_anything_is_recorded(
        tmp_path: Path) -> None:
    from corral.backends.kubernetes import KubernetesBackend

    kube = KubernetesBackend(KubernetesOptions(flavour="job"))
    with pytest.raises(SubmitError, match=r"script 'nope\.py' not found"):
        kube.submit(spec(entrypoint={"kind": "script", "path": "nope.py"},
                         workdir=str(tmp_path)))
    with pytest.raises(SubmitError, match="is not a directory"):
        kube.submit(spec(workdir=str(tmp_path / "gone")))
    assert kube.store.jobs("kubernetes") == []


def test_a_package_store_moves_the_code_out_of_the_config_map() -> None:
    plan = plan_for("volcano", package_store="s3://team-bucket/corral/")
    assert plan.pod_plan["package_url"] == (
        "s3://team-bucket/corral/train-261129-101010-abcdef/code.tar.gz")
    assert "binaryData" not in plan.dry_run_text()
    with pytest.raises(SpecError, match="package_store"):
        KubernetesOptions(package_store="team-bucket/corral")
