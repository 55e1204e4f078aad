"""Smoke tests of the Kubernetes test cluster itself (tests/infra/k8s_cluster.py): the control
plane, the fake kubelets, and the Volcano, Kueue and JobSet controllers, driven with the
`kubernetes` client the way a backend would."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.k8s

Obj = dict[str, Any]


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60) -> Any:
    """Poll `probe` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def api(k8s_cluster: Any) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(k8s_cluster.kubeconfig))


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace whose default ServiceAccount exists (pods need it)."""
    core = client.CoreV1Api(api)
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})

    def has_default_sa() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
            return True
        except ApiException as exc:
            if exc.status != 404:
                raise
            return False

    wait_for("the namespace's default ServiceAccount", has_default_sa)
    yield name
    core.delete_namespace(name)


def condition(obj: Obj, kind: str) -> bool:
    return any(c["type"] == kind and c["status"] == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def container(command: str) -> Obj:
    return {"name": "main", "image": "python:3.11-slim",
            "command": ["python3", "-c", command],
            "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}}}


def pod_spec(command: str, **extra: Any) -> Obj:
    return {"restartPolicy": "Never", "containers": [container(command)], **extra}


def test_control_plane_serves_1_36(k8s_cluster: Any, api: client.ApiClient) -> None:
    assert k8s_cluster.healthy()
    version = client.VersionApi(api).get_code()
    assert version.git_version.startswith("v1.36."), version
    assert version.minor == "36"


def test_all_nodes_ready(k8s_cluster: Any, api: client.ApiClient) -> None:
    nodes = {n.metadata.name: n for n in client.CoreV1Api(api).list_node().items}
    assert set(k8s_cluster.node_names) <= set(nodes)
    for name in k8s_cluster.node_names:
        node = nodes[name]
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert ready and ready[0].status == "True", (name, node.status.conditions)
        assert node.status.allocatable["cpu"] == str(k8s_cluster.node_cpus)
        assert not [t for t in node.spec.taints or [] if t.effect == "NoSchedule"], node.spec


def test_restricted_user_gets_403(k8s_cluster: Any) -> None:
    nobody = config.new_client_from_config(config_file=str(k8s_cluster.restricted_kubeconfig))
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(nobody).list_namespaced_pod("default")
    assert err.value.status == 403
    assert "corral-nobody" in err.value.body


def test_indexed_job_completes_on_fake_kubelets(api: client.ApiClient, namespace: str) -> None:
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    command = "import os, socket; print('index', os.environ['JOB_COMPLETION_INDEX'])"
    batch.create_namespaced_job(namespace, {
        "metadata": {"name": "indexed"},
        "spec": {"completionMode": "Indexed", "completions": 2, "parallelism": 2,
                 "backoffLimit": 0, "template": {"spec": pod_spec(command)}},
    })

    def complete() -> bool:
        job = batch.read_namespaced_job("indexed", namespace).to_dict()
        assert not condition(job, "Failed"), job["status"]
        return condition(job, "Complete")

    wait_for("the Job to complete", complete)
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=indexed").items
    assert len(pods) == 2
    assert {p.status.phase for p in pods} == {"Succeeded"}
    assert len({p.spec.node_name for p in pods}) >= 1
    logs = sorted(core.read_namespaced_pod_log(p.metadata.name, namespace).strip() for p in pods)
    assert logs == ["index 0", "index 1"]


def test_volcano_gang_job_gets_podgroup_and_runs(api: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object("batch.volcano.sh", "v1alpha1", namespace, "jobs", {
        "apiVersion": "batch.volcano.sh/v1alpha1", "kind": "Job",
        "metadata": {"name": "gang"},
        "spec": {
            "minAvailable": 2, "schedulerName": "volcano", "queue": "default",
            "tasks": [{"name": "worker", "replicas": 2, "template": {
                "spec": pod_spec("import time; time.sleep(1); print('ok')")}}],
        },
    })

    def podgroup() -> Obj | None:
        groups = custom.list_namespaced_custom_object(
            "scheduling.volcano.sh", "v1beta1", namespace, "podgroups")["items"]
        return groups[0] if groups else None

    group = wait_for("the Volcano PodGroup", podgroup)
    assert group["spec"]["minMember"] == 2

    def phase() -> str:
        job = custom.get_namespaced_custom_object("batch.volcano.sh", "v1alpha1", namespace,
                                                  "jobs", "gang")
        state = (job.get("status") or {}).get("state", {}).get("phase", "")
        assert state not in ("Failed", "Aborted", "Terminated"), job["status"]
        return state == "Completed"

    wait_for("the Volcano Job to complete", phase, timeout=90)
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace).items
    assert len(pods) == 2
    assert {p.spec.scheduler_name for p in pods} == {"volcano"}
    assert all(p.spec.node_name for p in pods)


def test_jobset_creates_child_jobs(api: client.ApiClient, namespace: str) -> None:
    custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
    job_template = {"spec": {"parallelism": 1, "completions": 1, "backoffLimit": 0,
                             "template": {"spec": pod_spec("print('hello from a jobset')")}}}
    custom.create_namespaced_custom_object("jobset.x-k8s.io", "v1alpha2", namespace, "jobsets", {
        "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
        "metadata": {"name": "pair"},
        "spec": {"replicatedJobs": [{"name": "workers", "replicas": 2,
                                     "template": job_template}]},
    })

    def children() -> list[Any]:
        selector = "jobset.sigs.k8s.io/jobset-name=pair"
        return batch.list_namespaced_job(namespace, label_selector=selector).items

    jobs = wait_for("the JobSet's child Jobs", children)
    assert len(jobs) == 2
    # JobSet's webhook defaulted it as in a real cluster: Indexed jobs, DNS hostnames
    assert {j.spec.completion_mode for j in jobs} == {"Indexed"}
    js = custom.get_namespaced_custom_object("jobset.x-k8s.io", "v1alpha2", namespace,
                                             "jobsets", "pair")
    assert js["spec"]["network"]["enableDNSHostnames"] is True
    assert js["spec"]["successPolicy"]["operator"] == "All"

    def completed() -> bool:
        js = custom.get_namespaced_custom_object("jobset.x-k8s.io", "v1alpha2", namespace,
                                                 "jobsets", "pair")
        assert not condition(js, "Failed"), js.get("status")
        return condition(js, "Completed")

    wait_for("the JobSet to complete", completed, timeout=90)


def test_kueue_admits_and_unsuspends_job(api: client.ApiClient, namespace: str) -> None:
    custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
    group, version = "kueue.x-k8s.io", "v1beta2"
    flavor, cq = f"flavor-{namespace}", f"cq-{namespace}"
    custom.create_cluster_custom_object(group, version, "resourceflavors", {
        "apiVersion": f"{group}/{version}", "kind": "ResourceFlavor",
        "metadata": {"name": flavor}})
    custom.create_cluster_custom_object(group, version, "clusterqueues", {
        "apiVersion": f"{group}/{version}", "kind": "ClusterQueue",
        "metadata": {"name": cq},
        "spec": {"namespaceSelector": {}, "resourceGroups": [{
            "coveredResources": ["cpu", "memory"],
            "flavors": [{"name": flavor, "resources": [
                {"name": "cpu", "nominalQuota": "2"},
                {"name": "memory", "nominalQuota": "1Gi"}]}]}]},
    })
    try:
        custom.create_namespaced_custom_object(group, version, namespace, "localqueues", {
            "apiVersion": f"{group}/{version}", "kind": "LocalQueue",
            "metadata": {"name": "lq"}, "spec": {"clusterQueue": cq}})
        # not created suspended: Kueue's webhook suspends it
        created = batch.create_namespaced_job(namespace, {
            "metadata": {"name": "queued", "labels": {"kueue.x-k8s.io/queue-name": "lq"}},
            "spec": {"parallelism": 2, "completions": 2, "backoffLimit": 0,
                     "template": {"spec": pod_spec("print('admitted')")}},
        })
        assert created.spec.suspend is True

        def admitted() -> Obj | None:
            items = custom.list_namespaced_custom_object(group, version, namespace,
                                                         "workloads")["items"]
            return items[0] if items and condition(items[0], "Admitted") else None

        workload = wait_for("Kueue to admit the Workload", admitted)
        assert workload["status"]["admission"]["clusterQueue"] == cq

        def done() -> bool:
            job = batch.read_namespaced_job("queued", namespace).to_dict()
            assert not condition(job, "Failed"), job["status"]
            return condition(job, "Complete")

        wait_for("the admitted Job to complete", done, timeout=90)
        assert batch.read_namespaced_job("queued", namespace).spec.suspend is False
    finally:
        # The ClusterQueue's finalizer lets it go once its workloads are gone with the namespace.
        for delete in (
            lambda: custom.delete_namespaced_custom_object(group, version, namespace,
                                                           "localqueues", "lq"),
            lambda: custom.delete_cluster_custom_object(group, version, "clusterqueues", cq),
            lambda: custom.delete_cluster_custom_object(group, version, "resourceflavors",
                                                        flavor),
        ):
            with contextlib.suppress(ApiException):
                delete()
