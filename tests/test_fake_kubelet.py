"""The fake kubelet (tests/infra/fake_kubelet.py) without a cluster: its pure parts, and, as
root, whole pods run in network namespaces on a throwaway bridge against an in-memory API."""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kubernetes")
from infra import fake_kubelet as fk

POD = {
    "metadata": {"name": "job-0-abc", "namespace": "team", "uid": "u-1", "labels": {"a": "b"},
                 "annotations": {"batch.kubernetes.io/job-completion-index": "3"}},
    "spec": {"nodeName": "node1", "hostname": "job-0", "subdomain": "job",
             "serviceAccountName": "sa",
             "containers": [{"name": "c", "resources": {"limits": {"memory": "1Gi"},
                                                        "requests": {"cpu": "250m"}}}]},
}


def test_expand_follows_kubernetes() -> None:
    env = {"A": "1", "B": "two"}
    assert fk.expand("$(A)-$(B)", env) == "1-two"
    assert fk.expand("$$(A) $(C) $( $x $", env) == "$(A) $(C) $( $x $"
    assert fk.expand("$(A", env) == "$(A"


def test_quantities() -> None:
    assert fk.quantity("500m") == fk.Fraction(1, 2)
    assert fk.quantity("8Gi") == 8 * 2**30
    assert fk.quantity("1e3") == 1000
    assert fk.quantity("2M") == 2_000_000
    with pytest.raises(ValueError):
        fk.quantity("3x")


def test_ip_pool_skips_network_and_gateway_and_reuses() -> None:
    pool = fk.IpPool("10.78.1.0/24")
    first, second = pool.allocate(), pool.allocate()
    assert (first, second) == ("10.78.1.2", "10.78.1.3")
    pool.release(first)
    assert pool.allocate() == first
    assert pool.allocate("10.78.1.9") == "10.78.1.9"
    assert len(pool.free) == 253 - 3  # .2 to .254, less the three taken
    assert "10.78.1.1" not in pool.free and "10.78.1.255" not in pool.free


def test_hosts_names() -> None:
    assert fk.pod_names(POD) == ["job-0.job.team.svc.cluster.local", "job-0.job", "job-0"]
    plain = {"metadata": {"name": "p", "namespace": "n"}, "spec": {}}
    assert fk.pod_names(plain) == ["p"]
    text = fk.render_hosts([("10.78.2.5", ["b"]), ("10.78.1.7", ["a"])])
    assert text.splitlines()[2:] == ["10.78.1.7\ta", "::ffff:10.78.1.7\ta", "10.78.2.5\tb",
                                     "::ffff:10.78.2.5\tb"]


FIELDS = {"IDX": "metadata.annotations['batch.kubernetes.io/job-completion-index']",
          "LBL": "metadata.labels['a']", "IP": "status.podIP", "NODE": "spec.nodeName",
          "SA": "spec.serviceAccountName"}


def test_container_env() -> None:
    def lookup(kind: str, ns: str, name: str) -> dict[str, bytes] | None:
        return {"k": b"v", "not an env name": b"x"} if (kind, name) == ("configmap", "cm") else None

    container = {"name": "c", "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"},
                                          {"secretRef": {"name": "nope", "optional": True}}],
                 "env": [
                     {"name": "A", "value": "x"}, {"name": "B", "value": "$(A)/$(HOSTNAME)"},
                     *({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}
                       for name, path in FIELDS.items()),
                     {"name": "MEM", "valueFrom": {"resourceFieldRef": {
                         "resource": "limits.memory", "divisor": "1Mi"}}},
                     {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                     {"name": "RCPU", "valueFrom": {"resourceFieldRef": {
                         "resource": "requests.cpu", "divisor": "1m"}}},
                     {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
                 ]}
    env = fk.container_env(POD, container, "10.78.1.2", lookup, {"cpu": "4"}, {"HOSTNAME": "h"})
    assert env == {"HOSTNAME": "h", "CM_k": "v", "A": "x", "B": "x/h", "IDX": "3", "LBL": "b",
                   "IP": "10.78.1.2", "NODE": "node1", "SA": "sa", "MEM": "1024", "CPU": "4",
                   "RCPU": "250", "K": "v"}
    missing = {"name": "c", "env": [{"name": "S", "valueFrom": {"secretKeyRef": {
        "name": "s", "key": "k"}}}]}
    with pytest.raises(fk.Missing):
        fk.container_env(POD, missing, "", lookup, {})


def test_parse_taint() -> None:
    assert fk.parse_taint("gpu=yes:NoSchedule") == {"key": "gpu", "value": "yes",
                                                    "effect": "NoSchedule"}
    assert fk.parse_taint("dedicated:NoExecute") == {"key": "dedicated", "effect": "NoExecute"}


# ----------------------------------------------------------------- pods, as root
class MemoryKubelet(fk.Kubelet):
    """A Kubelet whose API is a dict: GETs read `objects`, everything is recorded."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.objects: dict[str, Any] = {}
        self.calls: list[tuple[str, str, Any]] = []

    def request(self, method: str, path: str, body: Any = None, **_: Any) -> Any:
        self.calls.append((method, path, body))
        if method != "GET":
            return {}
        if path not in self.objects:
            raise fk.ApiError(404, b"not found")
        return self.objects[path]

    def statuses(self, name: str) -> list[dict[str, Any]]:
        return [b["status"] for m, p, b in self.calls
                if m == "PATCH" and p.endswith(f"/pods/{name}/status")]


def _memory_kubelet(tmp_path: Path, bridge: str) -> MemoryKubelet:
    (tmp_path / "kubeconfig").write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\n")
    args = argparse.Namespace(
        kubeconfig=str(tmp_path / "kubeconfig"), node="node1", cpu="4", memory="8Gi", gpus=0,
        pods=110, pod_cidr="10.79.1.0/24", bridge=bridge, gateway="10.79.0.1", port=0,
        tls_cert=str(tmp_path / "cert.pem"), tls_key=str(tmp_path / "key.pem"),
        state_dir=str(tmp_path / "state"), label=["tier=gpu"], taint=["dedicated=ml:NoSchedule"])
    k = MemoryKubelet(args)
    (k.state_dir / "logs").mkdir(parents=True)
    k.hosts_file.write_text(fk.render_hosts([]))
    (k.state_dir / "resolv.conf").write_text(fk.RESOLV_CONF)
    return k


class FakeStream:
    """What the watch reads: a urllib3 response with one event a line."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.data = b"".join(json.dumps(e).encode() + b"\n" for e in events)

    def stream(self, amt: Any = None, decode_content: Any = None) -> Iterator[bytes]:
        yield from (self.data[i:i + 50] for i in range(0, len(self.data), 50))

    def release_conn(self) -> None:
        pass


def test_watch_bookkeeping_and_relist(tmp_path: Path) -> None:
    k = _memory_kubelet(tmp_path, "no-such-bridge")
    other = {"metadata": {"name": "p", "namespace": "n", "uid": "u1", "resourceVersion": "5"},
             "spec": {"nodeName": "node2", "hostname": "h", "subdomain": "s"},
             "status": {"phase": "Running", "podIP": "10.79.2.2"}}
    events = [{"type": "ADDED", "object": other},
              {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "7"}}}]
    k.request = lambda *a, **kw: FakeStream(events)  # type: ignore[method-assign]
    assert k.watch("4") == "7"
    assert "10.79.2.2\th.s.n.svc.cluster.local h.s h\n" in k.hosts_file.read_text()
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410}}
    k.request = lambda *a, **kw: FakeStream([gone])  # type: ignore[method-assign]
    assert k.watch("7") == ""  # relist next

    class Stub:
        vanished = False

        def vanish(self) -> None:
            self.vanished = True

    stub = Stub()
    k.workers["lost-uid"] = stub  # type: ignore[assignment]
    k.request = lambda *a, **kw: {"metadata": {"resourceVersion": "9"}, "items": []}  # type: ignore
    assert k.relist() == "9"
    assert stub.vanished and not k.workers and not k.pods
    assert "10.79.2.2" not in k.hosts_file.read_text()


def test_node_registration(tmp_path: Path) -> None:
    k = _memory_kubelet(tmp_path, "no-such-bridge")
    k.request = lambda m, p, b=None, **kw: (  # type: ignore[method-assign]
        k.calls.append((m, p, b)) or {"metadata": {"uid": "n-uid"}})
    k.register()
    (_, _, node), (_, _, status), (_, lease_path, lease) = k.calls
    assert node["metadata"]["labels"]["tier"] == "gpu"
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "node1"
    assert node["spec"]["taints"] == [{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]
    assert status["status"]["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 0}}
    assert status["status"]["allocatable"]["memory"] == "8Gi"
    assert {"type": "Ready", "status": "True"}.items() <= status["status"]["conditions"][0].items()
    assert lease_path.endswith("/kube-node-lease/leases/node1")
    assert lease["spec"]["holderIdentity"] == "node1"


def _can_make_namespaces() -> bool:
    tools = ("ip", "nsenter", "unshare", "setsid", "openssl")
    return os.geteuid() == 0 and all(shutil.which(t) for t in tools)


@pytest.fixture
def kubelet(tmp_path: Path) -> Iterator[MemoryKubelet]:
    if not _can_make_namespaces():
        pytest.skip("needs root, iproute2, util-linux and openssl")
    bridge = f"ckt{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "10.79.0.1/16", "dev", bridge], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=fake-kubelet", "-keyout", str(tmp_path / "key.pem"),
                        "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
        k = _memory_kubelet(tmp_path, bridge)
        yield k
        k.stopping.set()
        for worker in list(k.workers.values()):
            worker.wake.set()
            worker.thread.join(10)
    finally:
        subprocess.run(["ip", "link", "delete", bridge], check=False)


def _pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "uid": str(uuid.uuid4())},
            "spec": {"nodeName": "node1", "restartPolicy": "Never", "containers": containers,
                     **spec}, "status": {}}


def test_pod_runs_in_its_namespace(kubelet: MemoryKubelet) -> None:
    kubelet.objects["/api/v1/namespaces/default/configmaps/cm"] = {"data": {"f": "from cm"}}
    kubelet.objects["/api/v1/namespaces/default/secrets/s"] = {
        "data": {"k": base64.b64encode(b"secret").decode()}}
    script = ("import os, socket; print(socket.gethostname(), socket.gethostbyname('w-0.grp'));"
              "print(open('/cfg/f').read(), open('/sec/key').read(), os.environ['ME']);"
              "print(os.statvfs('/dev/shm').f_blocks * os.statvfs('/dev/shm').f_frsize)")
    pod = _pod("worker", [
        {"name": "main", "command": ["python3", "-c"], "args": [script],
         "env": [{"name": "ME", "value": "$(HOSTNAME)!"}],
         "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"},
                          {"name": "sec", "mountPath": "/sec", "readOnly": True}]},
        {"name": "side", "command": ["sh", "-c", "echo side $HOSTNAME"]},
    ], hostname="w-0", subdomain="grp", initContainers=[{"name": "i", "command": ["true"]}],
        volumes=[{"name": "cfg", "configMap": {"name": "cm"}},
                 {"name": "sec", "secret": {"secretName": "s", "items": [
                     {"key": "k", "path": "key"}]}}])
    kubelet.on_pod("ADDED", pod)
    worker = kubelet.workers[pod["metadata"]["uid"]]
    worker.thread.join(30)
    out = (worker.log_dir / "main.log").read_text()
    assert out.split("\n")[0] == "w-0 10.79.1.2"
    assert "from cm secret w-0!" in out
    assert out.split("\n")[2] == str(64 * 2**20)  # its own /dev/shm
    assert (worker.log_dir / "side.log").read_text() == "side w-0\n"
    final = kubelet.statuses("worker")[-1]
    assert final["phase"] == "Succeeded"
    assert final["podIP"] == "10.79.1.2"
    assert [c["state"]["terminated"]["reason"] for c in final["containerStatuses"]] == [
        "Completed", "Completed"]
    assert not Path(f"/run/netns/{worker.netns}").exists()
    assert kubelet.pool.allocate() == "10.79.1.2"  # freed


def test_deleting_a_pod_stops_its_processes(kubelet: MemoryKubelet) -> None:
    pod = _pod("sleeper", [{"name": "main", "command": [
        "sh", "-c",
        "trap 'echo bye; sleep 0.3; exit 0' TERM; (setsid sleep 300 &); sleep 300 & wait"]}])
    kubelet.on_pod("ADDED", pod)
    worker = kubelet.workers[pod["metadata"]["uid"]]
    deadline = time.monotonic() + 10
    while len(fk.pids_of(worker.netns, [])) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = fk.pids_of(worker.netns, [])
    assert len(pids) == 3
    pod["metadata"] |= {"deletionTimestamp": fk.now(), "deletionGracePeriodSeconds": 5}
    kubelet.on_pod("MODIFIED", pod)
    worker.thread.join(10)
    assert not any(fk.alive(pid) for pid in pids)
    assert (worker.log_dir / "main.log").read_text() == "bye\n"
    assert kubelet.statuses("sleeper")[-1]["phase"] == "Succeeded"
    delete = [(m, b) for m, p, b in kubelet.calls if m == "DELETE"]
    assert delete == [("DELETE", {"gracePeriodSeconds": 0,
                                  "preconditions": {"uid": pod["metadata"]["uid"]}})]


def test_missing_config_map_keeps_the_pod_pending(kubelet: MemoryKubelet) -> None:
    pod = _pod("waits", [{"name": "main", "command": ["cat", "/cfg/x"],
                          "volumeMounts": [{"name": "v", "mountPath": "/cfg"}]}],
               restartPolicy="OnFailure", volumes=[{"name": "v", "configMap": {"name": "late"}}])
    kubelet.on_pod("ADDED", pod)
    time.sleep(0.5)
    pending = kubelet.statuses("waits")[-1]
    assert pending["phase"] == "Pending"
    assert pending["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
    assert any(b and b.get("reason") == "FailedMount" for _, _, b in kubelet.calls)
    kubelet.objects["/api/v1/namespaces/default/configmaps/late"] = {"data": {"x": "here"}}
    kubelet.workers[pod["metadata"]["uid"]].thread.join(10)
    assert kubelet.statuses("waits")[-1]["phase"] == "Succeeded"


def test_log_server(kubelet: MemoryKubelet) -> None:
    pod = _pod("talker", [{"name": "main", "command": [
        "sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.2; done"]}])
    kubelet.on_pod("ADDED", pod)
    server = fk.serve_logs(kubelet, 0, kubelet.args.tls_cert, kubelet.args.tls_key)
    port = server.server_address[1]
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE

    def get(path: str) -> bytes:
        url = f"https://127.0.0.1:{port}{path}"
        return urllib.request.urlopen(url, context=context, timeout=10).read()

    try:
        base = "/containerLogs/default/talker/main"
        assert get(f"{base}?follow=true") == b"line 1\nline 2\nline 3\n"
        assert get(f"{base}?tailLines=1") == b"line 3\n"
        assert get(f"{base}?limitBytes=4") == b"line"
        assert get("/healthz") == b"ok"
        with pytest.raises(urllib.error.HTTPError) as err:
            get("/containerLogs/default/talker/nope")
        assert err.value.code == 404
    finally:
        server.shutdown()
