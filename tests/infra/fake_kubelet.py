"""A fake kubelet for corral's test Kubernetes cluster: pods run as plain processes.

There is no real kubelet here (no systemd, cgroup v1, no container runtime), so this process
plays one node's kubelet against the real control plane. It registers the Node, keeps its Lease
and Ready condition fresh, watches the pods bound to it and runs each pod like the Slurm test
cluster runs its daemons: a network namespace ``ck-<id>`` with a veth on the cluster bridge and
its own IP from ``--pod-cidr`` (prefix of the bridge's subnet, so pods on every node reach each
other, and a default route to ``--gateway``; ip_forward stays off, nothing leaves the machine),
and every container as ``nsenter --net=/run/netns/NS unshare --uts --mount sh -c 'hostname H;
mount --bind ...; exec setsid COMMAND ARGS'``.

What it fakes:
  * images: the image is IGNORED. ``command + args`` run on the host's file system, and the
    host's Python environment plays the image: PATH starts with this kubelet's interpreter
    directory, so ``python3`` in a command is the test venv's;
  * /etc/hosts: a per-kubelet file, rewritten in place from the pod watch (every pod's
    ``hostname[.subdomain[.ns.svc.cluster.local]]``), bind-mounted in each container. No DNS;
  * volumes: emptyDir (tmpfs for ``medium: Memory`` and on /dev/shm), configMap, secret,
    projected, downwardAPI, hostPath, and persistentVolumeClaim as the shared host directory
    ``<state>/../pvc/<namespace>/<claim>`` (a fake: no PV, no provisioner). Every pod gets its
    own tmpfs on /dev/shm. Mount points missing on the host are created, and removed after;
  * /etc/resolv.conf: points at nothing (127.0.0.1 in the pod), so a name missing from the
    hosts file fails at once instead of timing out on the host's nameserver;
  * pod status, container states and restarts (restartPolicy, with a small backoff), init
    containers, graceful deletion, activeDeadlineSeconds, container logs over HTTPS
    (``/containerLogs``, for ``kubectl logs``; the apiserver must prefer InternalIP);
  * hostNetwork pods run in the host's network namespace, with IP 127.0.0.1;
  * deletion: each container's main process (its command) gets SIGTERM, as from a container
    runtime; once the main processes have ended, or after ``deletionGracePeriodSeconds``,
    everything left in the pod (its netns, the containers' descendants) gets SIGKILL; then
    the pod is deleted with grace 0.

What it does not do: pull or unpack images, enforce resources (no cgroups: limits are only
reported through the downward API), probes, exec/attach/port-forward, CNI, kube-proxy
(ClusterIPs do not route), users/securityContext (everything runs as root), ephemeral and
sidecar containers, live updates of configMap/secret volumes.

State dir (``--state-dir``): ``netns`` (namespaces made, one a line, for the launcher to clean),
``hosts``, ``resolv.conf``, ``pods/<uid>/`` (volumes, shm, default work dir; removed with the
pod), ``logs/<ns>_<pod>_<uid>/<container>.log`` (kept after the pod, for debugging). A restart
with the same state dir first kills what the previous run left in its namespaces; pods that
were running then are restarted, or reported Failed when their restartPolicy is Never.
Its own log goes to stderr. SIGTERM/SIGINT stops every pod's processes and exits 0; the Node
object is left for the launcher. Standard library + ``kubernetes`` only; needs root.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import ipaddress
import json
import math
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client, config
from kubernetes.watch.watch import iter_resp_lines

Obj = dict[str, Any]
LookupFn = Callable[[str, str, str], "dict[str, bytes] | None"]
HOST_IP = "127.0.0.1"
VERSION = "v1.36.3-fake"
TIMEOUT = 15  # seconds, for every API call but the watch
BIN = {name: shutil.which(name) or f"/usr/bin/{name}" for name in
       ("ip", "nsenter", "unshare", "setsid", "mount", "umount", "hostname", "mkdir", "sh")}
SUFFIXES: dict[str, Fraction | int] = {
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    **{s: 2 ** (10 * i) for i, s in enumerate(["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"], 1)},
}
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
TERMINAL = ("Succeeded", "Failed")
# No DNS in this cluster: names come from /etc/hosts, and a lookup that misses fails at once
# (nothing listens on port 53 in a pod) instead of timing out on the host's nameserver.
RESOLV_CONF = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run(*argv: str, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def quantity(text: str | int | float) -> Fraction:
    """A Kubernetes resource quantity ("500m", "8Gi", "1e3") as an exact number."""
    match = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)", str(text).strip())
    if not match or match[2] not in SUFFIXES:
        raise ValueError(f"bad quantity {text!r}")
    return Fraction(match[1]) * SUFFIXES[match[2]]


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known names are replaced, $$ is a literal $, and anything
    else (unknown names, unclosed references) stays as written."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "$" or i + 1 == len(text):
            out.append(text[i])
            i += 1
        elif text[i + 1] == "$":
            out.append("$")
            i += 2
        elif text[i + 1] == "(" and ")" in text[i + 2:]:
            end = text.index(")", i + 2)
            name = text[i + 2:end]
            out.append(env.get(name, f"$({name})"))
            i = end + 1
        else:
            out.append(text[i:i + 2])
            i += 2
    return "".join(out)


# ------------------------------------------------------------------------- processes
def _stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [state, ppid, ...]; [] if there is no such PID."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def alive(pid: int) -> bool:
    """True while the process runs (a zombie counts as gone)."""
    return _stat(pid)[:1] not in ([], ["Z"])


def pids_of(netns: str, roots: Iterable[int]) -> set[int]:
    """Live processes in network namespace `netns` (by nsfs inode), plus all descendants of
    `roots` (by PPID), whatever namespace they moved to."""
    try:
        inode = os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        inode = -1
    found, children = set(roots), {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid, fields = int(entry), _stat(int(entry))
        if not fields or fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(pid)
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}/ns/net").st_ino == inode:
                found.add(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {pid for pid in found if alive(pid)}


def _session_leader(pid: int) -> bool:
    """A container's command runs as its own session's leader (``setsid``)."""
    try:
        return os.getsid(pid) == pid
    except OSError:
        return False


def signal_once(pids: Iterable[int], leaders: Iterable[int], sig: signal.Signals) -> None:
    """Signal the process groups of `leaders` (a container's session), and each of `pids`
    outside them, so that no process gets `sig` twice."""
    groups = set()
    for pid in leaders:
        with contextlib.suppress(OSError):
            os.killpg(pid, sig)
            groups.add(pid)
    for pid in pids:
        with contextlib.suppress(OSError):
            if os.getpgid(pid) not in groups:
                os.kill(pid, sig)


def mounted_anywhere(path: str) -> bool:
    """Whether `path` is a mount point in any process's mount namespace (rmdir would lazily
    unmount it there)."""
    seen = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            ns = os.stat(f"/proc/{entry}/ns/mnt").st_ino
            if ns in seen:
                continue
            seen.add(ns)
            lines = Path(f"/proc/{entry}/mountinfo").read_text().splitlines()
            if any(line.split()[4] == path for line in lines):
                return True
        except (OSError, IndexError):
            continue
    return False


def unmount_under(root: Path) -> None:
    """Unmount (lazily, deepest first) everything mounted at or below `root` on the host."""
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted((p for p in points if (p + "/").startswith(f"{root}/")), reverse=True):
        run(BIN["umount"], "-l", point, check=False)


# ------------------------------------------------------------------------- pure helpers
class IpPool:
    """Addresses of the pod CIDR, skipping the network address, .1 and broadcast; freed ones
    are handed out again (lowest first)."""

    def __init__(self, cidr: str) -> None:
        net = ipaddress.ip_network(cidr)
        self.free = [str(ip) for ip in net.hosts() if int(ip) - int(net.network_address) > 1]
        self.lock = threading.Lock()

    def allocate(self, prefer: str = "") -> str:
        """`prefer` if it is free (a pod restarted by a new kubelet keeps its IP), else the
        lowest free address."""
        with self.lock:
            if not self.free:
                raise RuntimeError("no free pod IP left in the pod CIDR")
            return self.free.pop(self.free.index(prefer) if prefer in self.free else 0)

    def release(self, ip: str) -> None:
        with self.lock:
            if ip not in self.free:
                self.free.append(ip)
                self.free.sort(key=lambda a: int(ipaddress.ip_address(a)))


def pod_hostname(pod: Obj) -> str:
    return (pod["spec"].get("hostname") or pod["metadata"]["name"])[:63].rstrip("-.")


def pod_names(pod: Obj) -> list[str]:
    """The names /etc/hosts gives a pod: FQDN, host.subdomain and host; or just its name."""
    host, sub = pod_hostname(pod), pod["spec"].get("subdomain")
    if not sub:
        return [host]
    return [f"{host}.{sub}.{pod['metadata']['namespace']}.svc.cluster.local", f"{host}.{sub}", host]


def render_hosts(entries: Iterable[tuple[str, list[str]]]) -> str:
    """/etc/hosts text; the ::ffff: lines answer reverse lookups of v4-mapped peers (c10d)."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    for ip, names in sorted(entries, key=lambda e: (int(ipaddress.ip_address(e[0])), e[1])):
        lines += [f"{ip}\t{' '.join(names)}", f"::ffff:{ip}\t{' '.join(names)}"]
    return "\n".join(lines) + "\n"


def field_value(pod: Obj, path: str, ip: str) -> str:
    """A downward-API fieldRef."""
    meta, spec = pod["metadata"], pod["spec"]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.*)'\]", path)
    if match:
        return str((meta.get(match[1]) or {}).get(match[2], ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = sorted((meta.get(path.split(".")[1]) or {}).items())
        return "\n".join(f"{k}={json.dumps(v)}" for k, v in items)
    values = {
        "metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"], "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": ip, "status.podIPs": ip, "status.hostIP": HOST_IP,
        "status.hostIPs": HOST_IP,
    }
    if path not in values:
        raise ValueError(f"unsupported fieldRef {path!r}")
    return values[path]


def resource_value(pod: Obj, ref: Obj, default_container: str, node_alloc: dict[str, str]) -> str:
    """A downward-API resourceFieldRef: the container's limit (else the node's allocatable) or
    request, divided by the divisor and rounded up, as Kubernetes does."""
    name = ref.get("containerName") or default_container
    container = next(c for c in pod["spec"]["containers"] if c["name"] == name)
    kind, _, res = ref["resource"].partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(res)
    if value is None:
        value = node_alloc.get(res, "0") if kind == "limits" else "0"
    return str(math.ceil(quantity(value) / quantity(ref.get("divisor") or "1")))


def container_env(
    pod: Obj, container: Obj, ip: str, lookup: LookupFn, node_alloc: dict[str, str],
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """The container's environment as the kubelet builds it: `base`, envFrom, then env with
    $(VAR) expansion; `lookup(kind, ns, name)` reads a ConfigMap/Secret (None if missing).
    Raises Missing when a non-optional reference is missing."""
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = dict(base or {})
    for source in container.get("envFrom") or []:
        kind = "configmap" if "configMapRef" in source else "secret"
        ref = source.get("configMapRef") or source.get("secretRef") or {}
        data = lookup(kind, ns, ref["name"])
        if data is None and not ref.get("optional"):
            raise Missing("CreateContainerConfigError", f"{kind} {ns}/{ref['name']} not found")
        for key, value in (data or {}).items():
            name = source.get("prefix", "") + key
            if ENV_NAME.match(name):
                env[name] = value.decode(errors="replace")
    for var in container.get("env") or []:
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = expand(var.get("value", ""), env)
        elif "fieldRef" in source:
            env[var["name"]] = field_value(pod, source["fieldRef"]["fieldPath"], ip)
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            env[var["name"]] = resource_value(pod, ref, container["name"], node_alloc)
        else:
            kind = "configmap" if "configMapKeyRef" in source else "secret"
            ref = source.get("configMapKeyRef") or source.get("secretKeyRef") or {}
            data = lookup(kind, ns, ref["name"]) or {}
            if ref["key"] in data:
                env[var["name"]] = data[ref["key"]].decode(errors="replace")
            elif not ref.get("optional"):
                what = f"key {ref['key']} of {kind} {ns}/{ref['name']}"
                raise Missing("CreateContainerConfigError", f"{what} not found")
    return env


class Missing(Exception):
    """Something the pod needs (a ConfigMap, a Secret, a key) does not exist yet: the pod
    stays Pending and the kubelet retries."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Stop(Exception):
    """The pod is being deleted, or the kubelet stops."""


class ApiError(Exception):
    """A non-2xx answer of the apiserver."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body.decode(errors='replace')[:500]}")
        self.status = status


# ------------------------------------------------------------------------- pods
class Container:
    """One container of a pod: its process, state and restarts."""

    def __init__(self, spec: Obj) -> None:
        self.spec, self.name = spec, spec["name"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.state: Obj = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: Obj = {}
        self.restarts, self.started_at, self.cid = -1, "", ""
        self.restart_at: float | None = None
        self.env: dict[str, str] = {}
        self.mounts: list[tuple[str, str, bool]] = []  # (source, mountPath, readOnly)

    @property
    def exit_code(self) -> int | None:
        return self.state.get("terminated", {}).get("exitCode")

    @property
    def done(self) -> bool:
        return self.exit_code is not None and self.restart_at is None

    def status(self) -> Obj:
        running = "running" in self.state
        status = {
            "name": self.name, "image": self.spec.get("image") or "none",
            "imageID": f"fake://{self.spec.get('image') or 'none'}", "ready": running,
            "started": running, "restartCount": max(self.restarts, 0), "state": self.state,
            "lastState": self.last_state,
        }
        return status | ({"containerID": self.cid} if self.cid else {})


class PodWorker:
    """Runs one pod of this node, from its start to its deletion, in its own thread."""

    def __init__(self, kubelet: Kubelet, pod: Obj) -> None:
        self.k, self.pod = kubelet, pod
        meta, spec = pod["metadata"], pod["spec"]
        self.uid, self.name, self.ns = meta["uid"], meta["name"], meta["namespace"]
        self.key = f"{self.ns}/{self.name}"
        short = self.uid.replace("-", "")[:10]
        self.netns, self.veth = f"ck-{short}", f"ckh{short}"
        self.dir = kubelet.state_dir / "pods" / self.uid
        self.log_dir = kubelet.state_dir / "logs" / f"{self.ns}_{self.name}_{self.uid}"
        self.host_net = bool(spec.get("hostNetwork"))
        self.hostname = kubelet.node if self.host_net else pod_hostname(pod)
        self.policy = spec.get("restartPolicy", "Always")
        self.inits = [Container(c) for c in spec.get("initContainers") or []]
        self.mains = [Container(c) for c in spec["containers"]]
        self.ip, self.net_up, self.netns_made = "", False, False
        self.phase, self.reason, self.message, self.start_time = "Pending", "", "", ""
        self.conds: dict[str, tuple[bool, str]] = {}
        self.volumes: dict[str, Path] = {}
        self.created: list[Path] = []  # host mount points this pod made, in creation order
        self.lock = threading.Lock()
        self.wake = threading.Event()  # deletion, disappearance or kubelet shutdown
        self.delete_grace: float | None = None
        self.gone = self.done = self.was_terminal = False
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self.run, name=f"pod {self.key}", daemon=True)

    # ---- requests from the watch
    def request_delete(self, grace: float) -> None:
        with self.lock:
            if self.delete_grace is not None:
                return
            self.delete_grace, done = grace, self.done
        log(f"pod {self.key}: deletion requested (grace {grace}s)")
        self.wake.set()
        if done:
            threading.Thread(target=self.delete_and_clean, daemon=True).start()

    def vanish(self) -> None:
        """The pod is gone from the API: stop whatever runs, clean up, report nothing."""
        self.gone = True
        self.request_delete(0)

    # ---- lifecycle
    def run(self) -> None:
        status = self.pod.get("status") or {}
        try:
            if status.get("phase") in TERMINAL:  # finished under an earlier kubelet
                self.phase, self.was_terminal = status["phase"], True
            elif status.get("startTime") and self.policy == "Never":
                self._lost()
            else:
                self._lifecycle()
        except Stop:
            pass
        except Exception as exc:
            log(f"pod {self.key}: setup failed:\n{traceback.format_exc()}")
            self.phase, self.reason = "Failed", "FakeKubeletError"
            self.message = f"{type(exc).__name__}: {exc}"
            self._event("Failed", self.message)
        finally:
            self._finish()

    def _lifecycle(self) -> None:
        self.start_time = now()
        log(f"pod {self.key}: starting (uid {self.uid})")
        self._setup_network()
        self._set_cond("PodReadyToStartContainers", True)
        self._prepare()
        self._set_cond("Initialized", not self.inits)
        for c in self.inits:
            self._run_group([c])
            if c.exit_code != 0:
                self.phase = "Failed"
                return
        self._set_cond("Initialized", True)
        self.phase = "Running"
        self._run_group(self.mains)
        ok = all(c.exit_code == 0 for c in self.mains)
        self.phase = "Succeeded" if ok else "Failed"

    def _lost(self) -> None:
        """A pod that ran under an earlier kubelet and cannot restart: report it Failed."""
        for c in [*self.inits, *self.mains]:
            msg = "the fake kubelet restarted while the container ran"
            term = {"exitCode": 137, "reason": "ContainerStatusUnknown", "message": msg}
            c.state = {"terminated": term | {"finishedAt": now()}}
        self.phase, self.start_time = "Failed", self.pod["status"]["startTime"]

    def _run_group(self, group: list[Container]) -> None:
        """Start the containers, then restart/reap them until all are done."""
        for c in group:
            self._start(c)
        self._report()
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        while not all(c.done for c in group):
            if self.wake.is_set():
                raise Stop
            if deadline is not None and time.monotonic() - self.t0 > deadline:
                self.reason = "DeadlineExceeded"
                self.message = "Pod was active on the node longer than the specified deadline"
                log(f"pod {self.key}: {self.message}")
                raise Stop
            changed = False
            for c in group:
                if c.proc is not None and c.proc.poll() is not None:
                    self._exited(c, may_restart=True)
                    changed = True
                elif c.restart_at is not None and time.monotonic() >= c.restart_at:
                    self._start(c)
                    changed = True
            if changed:
                self._report()
            self.wake.wait(0.1)

    def _finish(self) -> None:
        grace = self.delete_grace
        if grace is None:
            grace = 5 if self.k.stopping.is_set() else 2
        if self.reason == "DeadlineExceeded":
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        try:
            self._kill(grace)
        finally:
            self._teardown()
        if self.phase not in TERMINAL:
            ok = self.reason != "DeadlineExceeded" and all(c.exit_code == 0 for c in self.mains)
            self.phase = "Succeeded" if ok else "Failed"
        if not self.was_terminal:
            codes = {c.name: c.exit_code for c in [*self.inits, *self.mains]}
            log(f"pod {self.key}: {self.phase} {self.reason} exit codes {codes}")
            self._report(tries=3)
        with self.lock:
            self.done, delete = True, self.delete_grace is not None
        if delete:
            self.delete_and_clean()

    def delete_and_clean(self) -> None:
        """The last step of a deleted pod: remove it from the API (grace 0, same uid)."""
        if not (self.gone or self.k.stopping.is_set()):
            body = {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}}
            try:
                self.k.request("DELETE", f"/api/v1/namespaces/{self.ns}/pods/{self.name}", body)
            except ApiError as exc:
                if exc.status not in (404, 409):
                    log(f"pod {self.key}: delete failed: {exc}")
            except Exception as exc:
                log(f"pod {self.key}: delete failed: {exc}")
        shutil.rmtree(self.dir, ignore_errors=True)
        log(f"pod {self.key}: deleted")

    # ---- network and files
    def _setup_network(self) -> None:
        if self.host_net:
            self.ip = HOST_IP
            return
        self.ip = self.k.pool.allocate((self.pod.get("status") or {}).get("podIP", ""))
        self.k.record_netns(self.netns, add=True)
        run(BIN["ip"], "netns", "delete", self.netns, check=False)  # a leftover of a crash
        run(BIN["ip"], "netns", "add", self.netns)
        self.netns_made = True
        run(BIN["ip"], "link", "add", self.veth, "type", "veth", "peer", "name", "eth0",
            "netns", self.netns)
        run(BIN["ip"], "link", "set", self.veth, "master", self.k.args.bridge, "up")
        for cmd in (f"addr add {self.ip}/{self.k.prefix} dev eth0", "link set eth0 up",
                    "link set lo up", f"route add default via {self.k.args.gateway}"):
            run(BIN["ip"], "-n", self.netns, *cmd.split())
        self.net_up = True
        self.k.refresh_hosts()
        log(f"pod {self.key}: netns {self.netns} ip {self.ip}")

    def _teardown(self) -> None:
        self.net_up = False
        self._set_cond("PodReadyToStartContainers", False)
        self.k.refresh_hosts()
        if self.netns_made:
            run(BIN["ip"], "netns", "delete", self.netns, check=False)
            if Path(f"/sys/class/net/{self.veth}").exists():
                run(BIN["ip"], "link", "delete", self.veth, check=False)
            self.k.record_netns(self.netns, add=False)
            self.netns_made = False
        if self.ip and not self.host_net:
            self.k.pool.release(self.ip)
        unmount_under(self.dir)
        for path in reversed(self.created):
            if not mounted_anywhere(str(path)):
                with contextlib.suppress(OSError):
                    path.rmdir() if path.is_dir() else path.unlink()
        self.created = []
        shutil.rmtree(self.dir, ignore_errors=True)

    def _prepare(self) -> None:
        """Volumes and environments; while something is missing, stay Pending and retry."""
        last = ""
        while True:
            if self.wake.is_set():
                raise Stop
            try:
                self._make_volumes()
                for c in [*self.inits, *self.mains]:
                    self._configure(c)
                return
            except Missing as exc:
                if str(exc) != last:
                    last = str(exc)
                    log(f"pod {self.key}: pending, {exc.reason}: {exc}")
                    self._event(exc.reason, str(exc))
                    for c in [*self.inits, *self.mains]:
                        reason = "ContainerCreating" if exc.reason == "FailedMount" else exc.reason
                        c.state = {"waiting": {"reason": reason, "message": str(exc)}}
                    self._report()
            self.wake.wait(1)

    def _make_volumes(self) -> None:
        spec = self.pod["spec"]
        shm_volumes = {m["name"] for c in spec["containers"] + spec.get("initContainers", [])
                       for m in c.get("volumeMounts") or [] if m["mountPath"] == "/dev/shm"}
        self._tmpfs(self.dir / "shm", "64Mi")
        for vol in spec.get("volumes") or []:
            name, path = vol["name"], self.dir / "volumes" / vol["name"]
            if "emptyDir" in vol:
                memory = vol["emptyDir"].get("medium") == "Memory" or name in shm_volumes
                path.mkdir(parents=True, exist_ok=True)
                if memory:
                    self._tmpfs(path, vol["emptyDir"].get("sizeLimit"))
            elif "persistentVolumeClaim" in vol:  # a fake: one shared host dir per claim
                claim = vol["persistentVolumeClaim"]["claimName"]
                path = self.k.state_dir.parent / "pvc" / self.ns / claim
                path.mkdir(parents=True, exist_ok=True)
            elif "hostPath" in vol:
                path = Path(vol["hostPath"]["path"])
                kind = vol["hostPath"].get("type", "")
                if kind == "DirectoryOrCreate":
                    path.mkdir(parents=True, exist_ok=True)
                elif kind == "FileOrCreate" and not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
            else:
                self._project(name, path, vol)
            self.volumes[name] = path

    def _tmpfs(self, path: Path, size: str | None) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(path):
            opts = "mode=1777" + (f",size={int(quantity(size))}" if size else "")
            run(BIN["mount"], "-t", "tmpfs", "-o", opts, "tmpfs", str(path))

    def _project(self, name: str, path: Path, vol: Obj) -> None:
        """configMap, secret, downwardAPI and projected volumes: files in a per-pod dir."""
        if "configMap" in vol or "secret" in vol or "downwardAPI" in vol:
            kind = next(k for k in ("configMap", "secret", "downwardAPI") if k in vol)
            source = dict(vol[kind])
            if kind == "secret":
                source["name"] = source.get("secretName", "")
            sources, mode = [{kind: source}], source.get("defaultMode", 0o644)
        elif "projected" in vol:
            sources = vol["projected"].get("sources") or []
            mode = vol["projected"].get("defaultMode", 0o644)
        else:
            raise RuntimeError(f"volume {name}: this type is not supported by the fake kubelet")
        files: dict[str, tuple[bytes, int]] = {}
        for source in sources:
            files |= self._source_files(name, source, mode)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        for rel, (data, file_mode) in files.items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_bytes(data)
            (path / rel).chmod(file_mode)

    def _source_files(self, volume: str, source: Obj, mode: int) -> dict[str, tuple[bytes, int]]:
        files: dict[str, tuple[bytes, int]] = {}
        for kind in ("configMap", "secret"):
            if kind not in source:
                continue
            ref = source[kind]
            data = self.k.lookup(kind.lower(), self.ns, ref.get("name", ""))
            if data is None and ref.get("optional"):
                continue
            if data is None:
                msg = f'volume "{volume}" : {kind.lower()} "{ref.get("name")}" not found'
                raise Missing("FailedMount", f"MountVolume.SetUp failed for {msg}")
            for item in ref.get("items") or [{"key": k, "path": k} for k in data]:
                if item["key"] in data:
                    files[item["path"]] = (data[item["key"]], item.get("mode", mode))
                elif not ref.get("optional"):
                    msg = f'key "{item["key"]}" not in {kind.lower()} "{ref["name"]}"'
                    raise Missing("FailedMount", f'volume "{volume}": {msg}')
        for item in (source.get("downwardAPI") or {}).get("items") or []:
            if "fieldRef" in item:
                value = field_value(self.pod, item["fieldRef"]["fieldPath"], self.ip)
            else:
                first = self.pod["spec"]["containers"][0]["name"]
                value = resource_value(self.pod, item["resourceFieldRef"], first, self.k.alloc)
            files[item["path"]] = (value.encode(), item.get("mode", mode))
        if "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            files[token["path"]] = (self.k.token(self.pod, token).encode(), mode)
        return files

    def _configure(self, c: Container) -> None:
        """The container's environment and mounts; mount points missing on the host made."""
        base = {"HOSTNAME": self.hostname, **self.k.service_env}
        c.env = container_env(self.pod, c.spec, self.ip, self.k.lookup, self.k.alloc, base)
        c.env.setdefault("PATH", self.k.default_path)
        c.env.setdefault("HOME", "/root")
        c.mounts = []
        for m in c.spec.get("volumeMounts") or []:
            if m["name"] not in self.volumes:
                raise RuntimeError(f"container {c.name} mounts unknown volume {m['name']}")
            source = self.volumes[m["name"]]
            sub = m.get("subPath") or expand(m.get("subPathExpr", ""), c.env)
            if sub:
                source = source / sub
                if not source.exists():
                    source.mkdir(parents=True)
            target = os.path.realpath(m["mountPath"])  # as /proc/*/mountinfo shows it
            self._make_mount_point(Path(target), source.is_dir())
            c.mounts.append((str(source), target, bool(m.get("readOnly"))))
        c.mounts.sort(key=lambda m: m[1].count("/"))

    def _make_mount_point(self, target: Path, is_dir: bool) -> None:
        """Create `target` (and missing parents) on the host, recording what this pod made;
        other kubelets' pods may be making (or removing) the same path at the same time, and
        the container's own `mkdir -p` has the last word."""
        missing = [p for p in [target, *target.parents] if not p.exists()][::-1]
        for path in missing:
            with contextlib.suppress(FileExistsError, FileNotFoundError):
                if path != target or is_dir:
                    path.mkdir()
                else:
                    path.touch(exist_ok=False)
                self.created.append(path)

    # ---- containers
    def _command(self, c: Container) -> list[str]:
        """command + args, $(VAR)-expanded (no image, so no entrypoint to fall back on)."""
        words = (c.spec.get("command") or []) + (c.spec.get("args") or [])
        argv = [expand(word, c.env) for word in words]
        if not argv:
            raise RuntimeError(f"container {c.name} has no command (the fake kubelet ignores "
                               "images, so their entrypoint is unknown)")
        return argv

    def _script(self, c: Container, argv: list[str]) -> list[str]:
        """The nsenter/unshare/sh line that sets up the container and execs its command."""
        q, mount = shlex.quote, BIN["mount"]
        state = self.k.state_dir
        lines = [f"{BIN['hostname']} {q(self.hostname)}",
                 f"{mount} --bind {q(str(state / 'hosts'))} /etc/hosts",
                 f"{mount} --bind {q(str(state / 'resolv.conf'))} /etc/resolv.conf",
                 f"{mount} --bind {q(str(self.dir / 'shm'))} /dev/shm"]
        for source, target, read_only in c.mounts:
            if Path(source).is_dir():  # a racing cleanup of another pod may have removed it
                lines.append(f"{BIN['mkdir']} -p {q(target)}")
            lines.append(f"{mount} --bind {q(source)} {q(target)}")
            if read_only:
                lines.append(f"{mount} -o remount,bind,ro {q(target)}")
        workdir = c.spec.get("workingDir") or str(self.dir / "work")
        lines += [f"{BIN['mkdir']} -p {q(workdir)}", f"cd {q(workdir)}",
                  f"exec {BIN['setsid']} {shlex.join(argv)}"]
        prefix = [] if self.host_net else [BIN["nsenter"], f"--net=/run/netns/{self.netns}"]
        return [*prefix, BIN["unshare"], "--uts", "--mount", BIN["sh"], "-ec", "\n".join(lines)]

    def _start(self, c: Container) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        command = self._command(c)
        argv = self._script(c, command)
        c.restart_at, c.restarts, c.cid = None, c.restarts + 1, f"fake://{uuid.uuid4().hex}"
        with open(self.log_dir / f"{c.name}.log", "ab") as out:
            c.proc = subprocess.Popen(argv, env=c.env, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, cwd="/")
        c.started_at = now()
        c.state = {"running": {"startedAt": c.started_at}}
        log(f"pod {self.key}: container {c.name} started, pid {c.proc.pid}, "
            f"restart {c.restarts}: {shlex.join(command)[:300]}")

    def _exited(self, c: Container, may_restart: bool) -> None:
        assert c.proc is not None
        code, c.proc = c.proc.returncode, None
        sig = -code if code < 0 else 0
        exit_code = 128 + sig if sig else code
        term: Obj = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                     "startedAt": c.started_at, "finishedAt": now(), "containerID": c.cid}
        if sig:
            term["signal"] = sig
        if exit_code and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            with contextlib.suppress(OSError):
                tail = (self.log_dir / f"{c.name}.log").read_bytes()[-2048:]
                term["message"] = tail.decode(errors="replace")
        c.state = {"terminated": term}
        log(f"pod {self.key}: container {c.name} exited {exit_code}, signal {sig}")
        restart = (self.policy == "Always" and c in self.mains) or (
            self.policy != "Never" and exit_code != 0)
        if may_restart and restart:
            backoff = min(0.5 * 2 ** c.restarts, 10.0)
            c.last_state = c.state
            c.state = {"waiting": {"reason": "CrashLoopBackOff" if exit_code else "Completed",
                                   "message": f"back-off {backoff:g}s restarting {c.name}"}}
            c.restart_at = time.monotonic() + backoff

    def _kill(self, grace: float) -> None:
        """As a container runtime stops a container: SIGTERM to each container's main
        process only (the command, in a session of its own: its PID 1), then, once the main
        processes are gone or `grace` s have passed, SIGKILL to every process left in the pod
        (process groups, netns members, descendants)."""
        containers = [c for c in [*self.inits, *self.mains] if c.proc is not None]
        ns = self.netns if self.netns_made else ""

        def left() -> tuple[list[int], set[int]]:
            roots = [c.proc.pid for c in containers if c.proc and c.proc.poll() is None]
            return roots, pids_of(ns, roots)

        roots, pids = left()
        mains = [pid for pid in pids if _session_leader(pid)] or roots
        if pids:
            log(f"pod {self.key}: SIGTERM to {len(mains)} main process(es)")
            for pid in mains:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + grace
            while time.monotonic() < end and any(alive(pid) for pid in mains):
                time.sleep(0.1)
        roots, pids = left()
        if pids:
            log(f"pod {self.key}: SIGKILL to {len(pids)} process(es)")
            signal_once(pids, roots, signal.SIGKILL)
            end = time.monotonic() + 2.0
            while time.monotonic() < end and left()[1]:
                time.sleep(0.1)
        for c in containers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(timeout=1)  # type: ignore[union-attr]
                self._exited(c, may_restart=False)
        for c in [*self.inits, *self.mains]:
            if c.restart_at is not None:  # waiting to restart: it stays as it ended
                c.restart_at, c.state = None, c.last_state

    # ---- status
    def _set_cond(self, kind: str, value: bool) -> None:
        if self.conds.get(kind, (None,))[0] != value:
            self.conds[kind] = (value, now())

    def _status(self) -> Obj:
        ready = self.phase == "Running" and all("running" in c.state for c in self.mains)
        self._set_cond("ContainersReady", ready)
        self._set_cond("Ready", ready)
        conds = []
        for kind, (value, since) in self.conds.items():
            cond = {"type": kind, "status": str(value), "lastTransitionTime": since,
                    "lastProbeTime": None}
            if not value and kind in ("ContainersReady", "Ready"):
                done = self.phase == "Succeeded"
                cond["reason"] = "PodCompleted" if done else "ContainersNotReady"
            conds.append(cond)
        status: Obj = {"phase": self.phase, "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}],
                       "conditions": conds, "containerStatuses": [c.status() for c in self.mains]}
        if self.inits:
            status["initContainerStatuses"] = [c.status() for c in self.inits]
        if self.ip:
            status |= {"podIP": self.ip, "podIPs": [{"$patch": "replace"}, {"ip": self.ip}]}
        if self.start_time:
            status["startTime"] = self.start_time
        if self.reason:
            status |= {"reason": self.reason, "message": self.message}
        return {"metadata": {"uid": self.uid}, "status": status}

    def _report(self, tries: int = 1) -> None:
        """Patch the pod's status (the uid in the patch makes it fail for a namesake)."""
        if self.gone or self.k.stopping.is_set():
            return
        body = self._status()
        for attempt in range(tries):
            try:
                path = f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status"
                self.k.request("PATCH", path, body, patch=True)
                return
            except ApiError as exc:
                log(f"pod {self.key}: status update failed: {exc}")
                if exc.status in (404, 409, 422):
                    return
            except Exception as exc:
                log(f"pod {self.key}: status update failed: {exc}")
            if attempt + 1 < tries:
                time.sleep(1)

    def _event(self, reason: str, message: str) -> None:
        t = now()
        body = {"metadata": {"generateName": f"{self.name}.", "namespace": self.ns},
                "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": self.name,
                                   "namespace": self.ns, "uid": self.uid},
                "reason": reason, "message": message, "type": "Warning", "count": 1,
                "source": {"component": "kubelet", "host": self.k.node},
                "firstTimestamp": t, "lastTimestamp": t}
        with contextlib.suppress(Exception):
            self.k.request("POST", f"/api/v1/namespaces/{self.ns}/events", body)

    def find(self, name: str) -> Container | None:
        return next((c for c in [*self.inits, *self.mains] if c.name == name), None)


# ------------------------------------------------------------------------- the node
class Kubelet:
    """The node: registration, heartbeats, the pod watch, the pods' workers, the log server."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.node = args, args.node
        self.state_dir = Path(args.state_dir).resolve()
        self.conf = client.Configuration()
        config.load_kube_config(config_file=args.kubeconfig, client_configuration=self.conf)
        self.http = client.ApiClient(self.conf).rest_client.pool_manager
        self.pool = IpPool(args.pod_cidr)
        self.prefix = bridge_prefix(args.bridge, args.gateway)
        self.hosts_file, self.hosts_text = self.state_dir / "hosts", ""
        self.alloc = {"cpu": args.cpu, "memory": args.memory, "pods": str(args.pods),
                      "ephemeral-storage": "100Gi"}
        if args.gpus:
            self.alloc["nvidia.com/gpu"] = str(args.gpus)
        self.default_path = f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:" \
                            "/usr/sbin:/usr/bin:/sbin:/bin"
        server = urlsplit(self.conf.host)
        api_host = server.hostname or args.gateway
        if api_host in ("127.0.0.1", "localhost", "::1"):  # pods cannot reach the host's loopback
            api_host = args.gateway
        self.service_env = {"KUBERNETES_SERVICE_HOST": api_host,
                            "KUBERNETES_SERVICE_PORT": str(server.port or 443)}
        self.stopping = threading.Event()
        self.lock = threading.Lock()  # pods, workers, hosts file, netns file
        self.pods: dict[str, Obj] = {}  # every pod of the cluster, by uid (for /etc/hosts)
        self.workers: dict[str, PodWorker] = {}  # this node's pods, by uid
        self.node_uid, self.started = "", now()

    # ---- API
    def request(self, method: str, path: str, body: Any = None, *, patch: bool = False,
                timeout: float = TIMEOUT, stream: bool = False) -> Any:
        """One call to the apiserver: JSON in, JSON out (or the raw response to stream)."""
        kind = "strategic-merge-patch+json" if patch else "json"
        headers = {"Accept": "application/json", "Content-Type": f"application/{kind}"}
        for auth in self.conf.auth_settings().values():  # a bearer token, if the config has one
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        resp = self.http.request(method, self.conf.host + path, headers=headers, timeout=timeout,
                                 body=None if body is None else json.dumps(body),
                                 preload_content=not stream)
        if not 200 <= resp.status < 300:
            raise ApiError(resp.status, resp.read() if stream else resp.data)
        return resp if stream else json.loads(resp.data)

    def lookup(self, kind: str, ns: str, name: str) -> dict[str, bytes] | None:
        """A ConfigMap's or Secret's data, decoded; None if it does not exist."""
        plural = "configmaps" if kind == "configmap" else "secrets"
        try:
            obj = self.request("GET", f"/api/v1/namespaces/{ns}/{plural}/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        binary = {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
        if kind == "secret":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        return {k: v.encode() for k, v in (obj.get("data") or {}).items()} | binary

    def token(self, pod: Obj, source: Obj) -> str:
        """A bound service-account token for a projected volume ("" if the apiserver can't)."""
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        spec: Obj = {"expirationSeconds": source.get("expirationSeconds", 3607),
                     "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                        "name": meta["name"], "uid": meta["uid"]}}
        if source.get("audience"):
            spec["audiences"] = [source["audience"]]
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token"
        try:
            return str(self.request("POST", path, {"spec": spec})["status"]["token"])
        except Exception as exc:
            log(f"pod {meta['namespace']}/{meta['name']}: no service-account token: {exc}")
            return ""

    # ---- node
    def register(self) -> None:
        labels = {"kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64", **dict(kv.split("=", 1) for kv in self.args.label)}
        taints = [parse_taint(t) for t in self.args.taint]
        cidr = self.args.pod_cidr
        body = {"metadata": {"name": self.node, "labels": labels},
                "spec": {"podCIDR": cidr, "podCIDRs": [cidr], "taints": taints}}
        try:
            node = self.request("POST", "/api/v1/nodes", body)
        except ApiError as exc:
            if exc.status != 409:
                raise
            node = self.request("GET", f"/api/v1/nodes/{self.node}")
            keep = [t for t in node["spec"].get("taints") or []
                    if t["key"].startswith("node.kubernetes.io/")]
            patch: Obj = {"metadata": {"labels": labels}, "spec": {"taints": taints + keep}}
            if not node["spec"].get("podCIDR"):
                patch["spec"] |= {"podCIDR": cidr, "podCIDRs": [cidr]}
            node = self.request("PATCH", f"/api/v1/nodes/{self.node}", patch, patch=True)
        self.node_uid = node["metadata"]["uid"]
        self.heartbeat()
        log(f"node {self.node} registered: {self.alloc}, pod CIDR {cidr}, port {self.args.port}")

    def heartbeat(self) -> None:
        """Ready condition (and the rest of the node status) and the node Lease."""
        t = now()
        conds = [("Ready", "True", "KubeletReady", "fake kubelet is posting ready status"),
                 ("MemoryPressure", "False", "KubeletHasSufficientMemory", ""),
                 ("DiskPressure", "False", "KubeletHasNoDiskPressure", ""),
                 ("PIDPressure", "False", "KubeletHasSufficientPID", "")]
        info = {"kubeletVersion": VERSION, "kubeProxyVersion": VERSION, "operatingSystem": "linux",
                "architecture": "amd64", "containerRuntimeVersion": "fake://1",
                "kernelVersion": os.uname().release, "osImage": "fake kubelet (host processes)",
                "machineID": self.node, "systemUUID": self.node_uid, "bootID": self.node_uid}
        status = {
            "capacity": self.alloc, "allocatable": self.alloc, "nodeInfo": info,
            "conditions": [{"type": k, "status": s, "reason": r, "message": m or r,
                            "lastHeartbeatTime": t, "lastTransitionTime": self.started}
                           for k, s, r, m in conds],
            "addresses": [{"type": "InternalIP", "address": HOST_IP},
                          {"type": "Hostname", "address": self.node}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.args.port}},
        }
        self.request("PATCH", f"/api/v1/nodes/{self.node}/status", {"status": status}, patch=True)
        micro = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {"holderIdentity": self.node, "leaseDurationSeconds": 40, "renewTime": micro}
        path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        try:
            self.request("PATCH", f"{path}/{self.node}", {"spec": spec}, patch=True)
        except ApiError as exc:
            if exc.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": self.node_uid}
            meta = {"name": self.node, "namespace": "kube-node-lease", "ownerReferences": [owner]}
            self.request("POST", path, {"metadata": meta, "spec": spec})

    def heartbeat_loop(self) -> None:
        while not self.stopping.wait(10):
            try:
                self.heartbeat()
            except ApiError as exc:
                log(f"heartbeat failed: {exc}")
                if exc.status == 404:  # someone deleted the Node: register it again
                    with contextlib.suppress(Exception):
                        self.register()
            except Exception as exc:
                log(f"heartbeat failed: {exc}")

    # ---- pods
    def watch_loop(self) -> None:
        """One watch on every pod; relist when the resourceVersion expired (410)."""
        rv = ""
        while not self.stopping.is_set():
            try:
                rv = rv or self.relist()
                rv = self.watch(rv)
            except Exception as exc:
                if isinstance(exc, ApiError) and exc.status == 410:
                    rv = ""
                    continue
                log(f"pod watch: {type(exc).__name__}: {exc}")
                self.stopping.wait(1)

    def relist(self) -> str:
        data = self.request("GET", "/api/v1/pods", timeout=60)
        uids = {pod["metadata"]["uid"] for pod in data["items"]}
        with self.lock:
            self.pods = {}
            lost = [self.workers.pop(uid) for uid in list(self.workers) if uid not in uids]
        for worker in lost:  # deleted while the watch was down
            worker.vanish()
        for pod in data["items"]:
            self.on_pod("ADDED", pod)
        self.refresh_hosts()
        return str(data["metadata"]["resourceVersion"])

    def watch(self, rv: str) -> str:
        """Follow the watch from `rv`; the resourceVersion to go on from, "" to relist."""
        query = f"watch=1&allowWatchBookmarks=true&timeoutSeconds=240&resourceVersion={rv}"
        resp = self.request("GET", f"/api/v1/pods?{query}", stream=True, timeout=300)
        try:
            for line in iter_resp_lines(resp):
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    if obj.get("code") == 410:
                        return ""
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                rv = obj["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    self.on_pod(event["type"], obj)
                    self.refresh_hosts()
                if self.stopping.is_set():
                    break
        finally:
            resp.release_conn()
        return rv

    def on_pod(self, kind: str, pod: Obj) -> None:
        meta = pod["metadata"]
        with self.lock:
            if kind == "DELETED":
                self.pods.pop(meta["uid"], None)
            else:
                self.pods[meta["uid"]] = pod
            if pod["spec"].get("nodeName") != self.node:
                return
            worker = self.workers.get(meta["uid"])
            if kind == "DELETED":
                if worker:
                    del self.workers[meta["uid"]]
                    worker.vanish()
                return
            if worker is None:
                if self.stopping.is_set():
                    return
                worker = self.workers[meta["uid"]] = PodWorker(self, pod)
                worker.thread.start()
            if meta.get("deletionTimestamp"):
                worker.request_delete(meta.get("deletionGracePeriodSeconds") or 0)

    def refresh_hosts(self) -> None:
        """Rewrite the hosts file in place (same inode: running pods see new peers)."""
        with self.lock:
            entries = {}
            for uid, pod in self.pods.items():
                status = pod.get("status") or {}
                if (status.get("podIP") and status.get("phase") not in TERMINAL
                        and pod["spec"].get("nodeName") != self.node
                        and not pod["spec"].get("hostNetwork")):
                    entries[uid] = (status["podIP"], pod_names(pod))
            for uid, worker in self.workers.items():
                if worker.net_up:
                    entries[uid] = (worker.ip, pod_names(worker.pod))
            text = render_hosts(entries.values())
            if text != self.hosts_text:
                with open(self.hosts_file, "r+") as f:
                    f.write(text)
                    f.truncate()
                self.hosts_text = text

    def record_netns(self, name: str, add: bool) -> None:
        """Keep <state>/netns listing the namespaces that exist (for the launcher's cleanup)."""
        path = self.state_dir / "netns"
        with self.lock:
            names = [n for n in path.read_text().split() if n != name] if path.exists() else []
            path.write_text("".join(f"{n}\n" for n in [*names, *[name] * add]))

    def find_log(self, ns: str, pod: str, container: str) -> tuple[Path, Callable[[], bool]] | None:
        """A container's log file and whether more may come."""
        with self.lock:
            worker = next((w for w in self.workers.values() if (w.ns, w.name) == (ns, pod)), None)
        c = worker.find(container) if worker else None
        if worker is None or c is None:
            return None
        return worker.log_dir / f"{container}.log", lambda: not (worker.done or c.done)

    # ---- start and stop
    def clean_leftovers(self) -> None:
        """What an earlier run of this kubelet (same state dir) left: processes, netns, mounts."""
        path = self.state_dir / "netns"
        for ns in path.read_text().split() if path.exists() else []:
            for pid in pids_of(ns, []):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            run(BIN["ip"], "netns", "delete", ns, check=False)
        path.write_text("")
        unmount_under(self.state_dir / "pods")
        shutil.rmtree(self.state_dir / "pods", ignore_errors=True)

    def run(self) -> None:
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.clean_leftovers()
        self.hosts_file.write_text(render_hosts([]))
        (self.state_dir / "resolv.conf").write_text(RESOLV_CONF)
        server = serve_logs(self, self.args.port, self.args.tls_cert, self.args.tls_key)
        while not self.stopping.is_set():
            try:
                self.register()
                break
            except Exception as exc:
                log(f"registering node {self.node} failed (retrying): {exc}")
                self.stopping.wait(2)
        for target in (self.heartbeat_loop, self.watch_loop):
            threading.Thread(target=target, name=target.__name__, daemon=True).start()
        while not self.stopping.wait(1):
            pass
        log("stopping: every pod's processes get SIGTERM, SIGKILL after 5 s")
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.wake.set()
        for thread in threading.enumerate():
            if thread.name.startswith("pod "):
                thread.join(timeout=20)
        server.shutdown()
        log("stopped")


def bridge_prefix(bridge: str, gateway: str) -> int:
    """The prefix length of the bridge's address `gateway` (16 if it cannot be read)."""
    try:
        for addr in json.loads(run(BIN["ip"], "-j", "-4", "addr", "show", "dev", bridge)):
            for info in addr.get("addr_info", []):
                if info.get("local") == gateway:
                    return int(info["prefixlen"])
    except (OSError, RuntimeError, ValueError, KeyError):
        pass
    log(f"bridge {bridge} has no address {gateway}: pod addresses get prefix /16")
    return 16


def parse_taint(text: str) -> Obj:
    """k=v:Effect or k:Effect."""
    key_value, _, effect = text.rpartition(":")
    key, _, value = key_value.partition("=")
    return {"key": key, "effect": effect} | ({"value": value} if value else {})


# ------------------------------------------------------------------------- logs over HTTPS
class LogHandler(BaseHTTPRequestHandler):
    """GET /containerLogs/<ns>/<pod>/<container> (follow, tailLines, limitBytes, sinceSeconds)
    and /healthz, as the apiserver asks a kubelet for `kubectl logs`."""

    kubelet: Kubelet
    timeout = 60

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        self.request.do_handshake()  # here, in the request's thread, not in the accept loop
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        if url.path == "/healthz":
            return self._reply(200, b"ok")
        found = None
        if len(parts) == 4 and parts[0] == "containerLogs":
            found = self.kubelet.find_log(*parts[1:])
        if found is None:
            return self._reply(404, f"no such container: {url.path}\n".encode())
        try:
            self._logs(*found, query)
        except (OSError, ValueError) as exc:  # the client went away, or a bad parameter
            with contextlib.suppress(OSError):
                self._reply(400, f"{exc}\n".encode())

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _logs(self, path: Path, live: Callable[[], bool], query: dict[str, str]) -> None:
        data = path.read_bytes() if path.exists() else b""
        offset = len(data)
        since = query.get("sinceSeconds")
        if since and path.exists() and path.stat().st_mtime < time.time() - int(since):
            data = b""  # approximate: nothing written since then
        if "tailLines" in query:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(query["tailLines"]):]) if int(query["tailLines"]) else b""
        left = int(query["limitBytes"]) if "limitBytes" in query else 1 << 62
        if query.get("follow") != "true":
            return self._reply(200, data[:left])
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Connection", "close")
        self.end_headers()
        while left > 0:
            self.wfile.write(data[:left])
            self.wfile.flush()
            left -= len(data[:left])
            more = live()
            data = b""
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read(1 << 20)
                offset += len(data)
            if not data and not more:
                break
            if not data:
                time.sleep(0.2)
        self.close_connection = True


def serve_logs(kubelet: Kubelet, port: int, cert: str, key: str) -> ThreadingHTTPServer:
    handler = type("Handler", (LogHandler,), {"kubelet": kubelet})
    server = ThreadingHTTPServer((HOST_IP, port), handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, name="logs", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--cpu", default="4")
    parser.add_argument("--memory", default="8Gi")
    parser.add_argument("--gpus", type=int, default=0)
    parser.add_argument("--pods", type=int, default=110)
    parser.add_argument("--pod-cidr", required=True)
    parser.add_argument("--bridge", required=True)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-cert", required=True)
    parser.add_argument("--tls-key", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--label", action="append", default=[], help="k=v (repeatable)")
    parser.add_argument("--taint", action="append", default=[], help="k=v:Effect (repeatable)")
    args = parser.parse_args(argv)
    kubelet = Kubelet(args)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: kubelet.stopping.set())
    kubelet.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
