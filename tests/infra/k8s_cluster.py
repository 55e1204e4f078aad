"""A real Kubernetes control plane with Volcano, Kueue and JobSet, plus fake kubelets, for tests.

Everything listens on 127.0.0.1 (pods excepted); nothing routes off the machine. Every add-on
runs with the admin kubeconfig and leader election off::

    etcd                 127.0.0.1:12379 (peer :12380)   Debian's etcd-server; data on a tmpfs
    kube-apiserver       https://127.0.0.1:16443        static tokens, Node,RBAC, SA keys
    controller-manager   127.0.0.1:16257                 leader election off
    kube-scheduler       127.0.0.1:16259                 leader election off
    vc-scheduler         127.0.0.1:16280/16281           actions enqueue, allocate, backfill
    vc-controller-manager 127.0.0.1:16282
    kueue                127.0.0.1:16290-16292           metrics, health, webhook (by URL)
    jobset               127.0.0.1:16293-16295           metrics, health, webhook (by URL)
    fake kubelet nodeN   127.0.0.1:1025N (TLS)           tests/infra/fake_kubelet.py, host netns
    bridge corral-kbr0   10.78.0.1/16                    pods of nodeN in 10.78.N.0/24 (netns ck-*)

The binaries come from tests/infra/k8s/build.sh (Go modules, cached under ~/.cache/corral).

State dir (default /tmp/corral-k8s)::

    kubeconfig  kubeconfig-nobody  tokens.csv   admin (system:masters) and corral-nobody (no RBAC)
    admin-token the admin's bearer token (this module's own REST calls)
    pki/        ca, apiserver serving, kubelet serving, service-account keys (openssl CLI)
    config/     volcano-scheduler.yaml kueue.yaml jobset.yaml
    pids/NAME.pid   "PID COMM" of each process started here; ``down`` stops exactly those
    log/NAME.log    each process's stdout/stderr (wiped on a fresh ``up``)
    kubelet/nodeN/  the fake kubelets' state (its ``netns`` file lists the pod namespaces)
    etcd/       a tmpfs in etcd's private mount namespace (gone when etcd stops)
    kueue-etc/  the upper layer of an overlay on /etc in Kueue's private mount namespace, which
                holds its metrics certificates at the fixed /etc/kueue/metrics/certs
    bin-dir     the binary cache dir this cluster runs from

CLI: ``python tests/infra/k8s_cluster.py up|down|status|build [--state-dir DIR]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:  # imported as infra.<module> by pytest (tests/ on sys.path), or run as a script
    from infra.hostprocs import alive as _alive
    from infra.hostprocs import comm as _comm
    from infra.hostprocs import daemon_pids as _daemon_pids
    from infra.hostprocs import foreign_cluster_up as _foreign_cluster_up
    from infra.hostprocs import pids_in_netns as _pids_in_netns
    from infra.hostprocs import run as _run
    from infra.hostprocs import running as _running
    from infra.hostprocs import start_fresh as _start_fresh
    from infra.hostprocs import stop_all as _stop_all
    from infra.hostprocs import wait_until as _wait
except ImportError:
    from hostprocs import alive as _alive  # type: ignore[no-redef]
    from hostprocs import comm as _comm  # type: ignore[no-redef]
    from hostprocs import daemon_pids as _daemon_pids  # type: ignore[no-redef]
    from hostprocs import foreign_cluster_up as _foreign_cluster_up  # type: ignore[no-redef]
    from hostprocs import pids_in_netns as _pids_in_netns  # type: ignore[no-redef]
    from hostprocs import run as _run  # type: ignore[no-redef]
    from hostprocs import running as _running  # type: ignore[no-redef]
    from hostprocs import start_fresh as _start_fresh  # type: ignore[no-redef]
    from hostprocs import stop_all as _stop_all  # type: ignore[no-redef]
    from hostprocs import wait_until as _wait  # type: ignore[no-redef]

DEFAULT_STATE_DIR = Path("/tmp/corral-k8s")
HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "k8s" / "build.sh"
FAKE_KUBELET = HERE / "fake_kubelet.py"
GO = shutil.which("go") or "/usr/local/go/bin/go"

BRIDGE = "corral-kbr0"
BRIDGE_ADDR = "10.78.0.1"
BRIDGE_PREFIX = 16
POD_NETNS_PREFIX = "ck-"
SERVICE_CIDR = "10.96.0.0/16"

LOOPBACK = "127.0.0.1"
ETCD_PORT = 12379
ETCD_PEER_PORT = 12380
APISERVER_PORT = 16443
CONTROLLER_MANAGER_PORT = 16257
SCHEDULER_PORT = 16259
VOLCANO_SCHEDULER_METRICS_PORT = 16280
VOLCANO_SCHEDULER_HEALTH_PORT = 16281
VOLCANO_CONTROLLER_HEALTH_PORT = 16282
VOLCANO_CONTROLLER_METRICS_PORT = 16283
KUEUE_METRICS_PORT = 16290
KUEUE_HEALTH_PORT = 16291
KUEUE_WEBHOOK_PORT = 16292
KUEUE_VISIBILITY_PORT = 16296
JOBSET_METRICS_PORT = 16293
JOBSET_HEALTH_PORT = 16294
JOBSET_WEBHOOK_PORT = 16295
KUBELET_BASE_PORT = 10250

# Kueue reads its metrics certificates from this fixed path when it does not manage certs.
KUEUE_METRICS_CERTS = "/etc/kueue/metrics/certs"

# The order in which `down` stops things (kubelets are stopped before all of these).
CONTROL_PLANE = ["etcd", "apiserver", "controller-manager", "scheduler"]
ADDONS = ["vc-scheduler", "vc-controller-manager", "kueue", "jobset"]

# Admission webhooks registered with the apiserver by URL (no Services here): add-on -> its
# port and the API groups of the webhooks kept from its manifests (the integrations enabled).
WEBHOOKS = {
    "kueue": (KUEUE_WEBHOOK_PORT, {"batch", "jobset.x-k8s.io", "kueue.x-k8s.io"}),
    "jobset": (JOBSET_WEBHOOK_PORT, {"", "jobset.x-k8s.io"}),
}

VOLCANO_SCHEDULER_CONF = """\
actions: "enqueue, allocate, backfill"
tiers:
- plugins:
  - name: priority
  - name: gang
    enablePreemptable: false
  - name: conformance
- plugins:
  - name: overcommit
  - name: drf
    enablePreemptable: false
  - name: predicates
  - name: proportion
  - name: nodeorder
  - name: binpack
"""


def _json_documents(text: str) -> list[Any]:
    """The objects of kubectl's `-o json` output: one, a List, or several one after another."""
    decoder, pos, found = json.JSONDecoder(), 0, []
    while pos < len(text.rstrip()):
        obj, end = decoder.raw_decode(text, pos)
        found += obj["items"] if obj.get("kind") == "List" else [obj]
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return found


# ------------------------------------------------------------------ build
def bin_dir() -> Path:
    """The cache dir build.sh builds into (whether it is built or not)."""
    return Path(_run("bash", str(BUILD_SCRIPT), "--print-dir").strip())


def build() -> Path:
    """Build the binaries (and copy the CRDs) if missing; the cache dir. Minutes when cold."""
    out = bin_dir()
    if (out / ".complete").exists():
        return out
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed ({proc.returncode}); see its output above")
    return Path(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the cluster
class K8sCluster:
    """etcd, the Kubernetes control plane, Volcano, Kueue, JobSet and one fake kubelet per node."""

    def __init__(
        self,
        state_dir: Path = DEFAULT_STATE_DIR,
        nodes: int = 3,
        node_cpus: int = 4,
        node_memory: str = "8Gi",
    ) -> None:
        if not 1 <= nodes <= 99 or node_cpus < 1:
            raise ValueError("need 1 to 99 nodes and at least 1 CPU per node")
        self.state_dir = Path(state_dir).resolve()
        self.node_cpus = node_cpus
        self.node_memory = node_memory
        self.node_names: list[str] = [f"node{i}" for i in range(1, nodes + 1)]
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.restricted_kubeconfig = self.state_dir / "kubeconfig-nobody"
        self.pki = self.state_dir / "pki"
        self.config_dir = self.state_dir / "config"
        self.pid_dir = self.state_dir / "pids"
        self.log_dir = self.state_dir / "log"
        self.kubelet_dir = self.state_dir / "kubelet"
        self.server = f"https://{LOOPBACK}:{APISERVER_PORT}"
        self._bin: Path | None = None

    # ----------------------------------------------------------------- public API
    @property
    def env(self) -> dict[str, str]:
        """Environment a client on the host needs (merge into os.environ)."""
        return {"KUBECONFIG": str(self.kubeconfig)}

    @property
    def bin(self) -> Path:
        """The binary cache dir (build.sh's output): bin/, crds/."""
        if self._bin is None:
            self._bin = bin_dir()
        return self._bin

    @property
    def kubectl(self) -> Path:
        """kubectl (the controlplane binary under that name)."""
        return self.bin / "bin" / "kubectl"

    def up(self) -> None:
        """Bring the cluster up: build what is missing, reuse a healthy cluster that runs the
        same binaries, else start everything from scratch."""
        self._bin = build()
        if self.healthy() and self._recorded_bin_dir() == self.bin and self._kubelets_run_me():
            return
        _start_fresh(BRIDGE, self.state_dir, self.down, self._start)

    def _kubelets_run_me(self) -> bool:
        """Whether the fake kubelets run this very interpreter: their pods run the code under
        test with it (a cluster started from another venv, perhaps deleted since, is not
        reused)."""
        for name, (pid, _) in _daemon_pids(self.pid_dir).items():
            if not name.startswith("kubelet-"):
                continue
            try:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            except OSError:
                return False
            if argv0 != sys.executable or not Path(argv0).exists():
                return False
        return True

    def down(self) -> None:
        """Stop (by PID) the kubelets, the add-ons, scheduler and controller-manager, the
        apiserver (SIGKILL after 1 s), etcd; delete the pod namespaces left and the bridge."""
        daemons = _daemon_pids(self.pid_dir)
        kubelets = [name for name in daemons if name.startswith("kubelet-")]
        foreign = _foreign_cluster_up(BRIDGE, self.state_dir)
        groups: list[tuple[list[str], float]] = [
            (kubelets, 15),
            (ADDONS, 5),
            (["controller-manager", "scheduler"], 5),
            # Its graceful shutdown waits a minute for watches (even once no client is left);
            # etcd's data is thrown away anyway.
            (["apiserver"], 1),
            (["etcd"], 10),
        ]
        named = {n for names, _ in groups for n in names}
        groups.insert(1, ([n for n in daemons if n not in named], 5))  # anything else recorded
        for names, grace in groups:
            procs = [daemons[n] for n in names if n in daemons]
            _stop_all(procs, grace, kill_wait=5.0)
            for name in names:
                (self.pid_dir / f"{name}.pid").unlink(missing_ok=True)
            if names is kubelets:
                self._delete_pod_namespaces()
        if not foreign and Path(f"/sys/class/net/{BRIDGE}").exists():
            alias = Path(f"/sys/class/net/{BRIDGE}/ifalias").read_text().strip()
            if alias in ("", str(self.state_dir)):
                _run("ip", "link", "delete", BRIDGE, check=False)

    def healthy(self) -> bool:
        """Every process alive, the apiserver ready and every node Ready."""
        pids = _daemon_pids(self.pid_dir)
        wanted = {*CONTROL_PLANE, *ADDONS, *(f"kubelet-{n}" for n in self.node_names)}
        if not self.kubeconfig.exists() or not wanted <= pids.keys():
            return False
        if not all(_running(*pids[name]) for name in wanted):
            return False
        try:
            return self._get_raw("/readyz") == b"ok" and self._nodes_ready()
        except (OSError, RuntimeError, ValueError):
            return False

    def status(self) -> str:
        lines = []
        for name, (pid, comm) in _daemon_pids(self.pid_dir).items():
            state = "running" if _running(pid, comm) else "GONE"
            lines.append(f"{name:22} pid {pid:<8} {state} ({comm})")
        if not lines:
            return "down (no processes recorded)"
        try:
            version = self.get("/version")["gitVersion"]
            nodes = self.get("/api/v1/nodes")["items"]
            lines += ["", f"apiserver {self.server}: {version}"]
            lines += [f"{n['metadata']['name']}: {self._node_condition(n)}" for n in nodes]
        except (OSError, RuntimeError, ValueError) as exc:
            lines += ["", f"apiserver {self.server}: {exc}"]
        return "\n".join(lines)

    # ----------------------------------------------------------------- REST (stdlib)
    def _token(self) -> str:
        return (self.state_dir / "admin-token").read_text().strip()

    def _request(self, method: str, path: str, body: Any = None, timeout: float = 10) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self._token()}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None

    def _get_raw(self, path: str) -> bytes:
        return self._request("GET", path, timeout=3)

    def get(self, path: str) -> Any:
        """GET an API path as the admin; the decoded JSON."""
        return json.loads(self._request("GET", path))

    def create(self, path: str, obj: dict[str, Any]) -> None:
        """POST `obj` to an API collection path as the admin; an existing object is fine."""
        try:
            self._request("POST", path, obj)
        except RuntimeError as exc:
            if ": 409 " not in str(exc):
                raise

    @staticmethod
    def _node_condition(node: dict[str, Any]) -> str:
        for cond in (node.get("status") or {}).get("conditions") or []:
            if cond["type"] == "Ready":
                return "Ready" if cond["status"] == "True" else f"NotReady ({cond.get('reason')})"
        return "NotReady (no condition)"

    def _nodes_ready(self) -> bool:
        nodes = {n["metadata"]["name"]: n for n in self.get("/api/v1/nodes")["items"]}
        return all(
            name in nodes and self._node_condition(nodes[name]) == "Ready"
            for name in self.node_names
        )

    # ----------------------------------------------------------------- start-up
    def _recorded_bin_dir(self) -> Path | None:
        path = self.state_dir / "bin-dir"
        return Path(path.read_text().strip()) if path.exists() else None

    def _start(self) -> None:
        started = time.monotonic()
        timings: list[str] = []

        def mark(what: str) -> None:
            timings.append(f"{what} {time.monotonic() - started:.1f}s")

        for sub in ("log", "kubelet", "run", "config", "pki", "kueue-etc"):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        for sub in ("log", "kubelet", "run", "config", "pki", "pids"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.state_dir / "bin-dir").write_text(f"{self.bin}\n")
        self._write_pki()
        self._write_auth()
        self._write_configs()
        self._make_network()
        self._start_etcd()
        self._start_apiserver()
        mark("apiserver ready")
        self._start_controllers()
        self._install_crds()
        mark("CRDs established")
        self._start_addons()
        mark("add-ons healthy")
        self._start_kubelets()
        mark("nodes Ready")
        (self.log_dir / "up-timings.txt").write_text("\n".join(timings) + "\n")

    def _openssl(self, *args: str) -> None:
        _run("openssl", *args)

    def _write_pki(self) -> None:
        p = self.pki
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        self._openssl("req", "-x509", *ec, "-keyout", str(p / "ca.key"), "-out", str(p / "ca.crt"),
                      "-days", "3650", "-subj", "/CN=corral-test-ca")
        apiserver_sans = [
            "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
            f"IP:{LOOPBACK}", "IP:10.96.0.1",
        ]
        kubelet_sans = ["DNS:localhost", f"IP:{LOOPBACK}", f"IP:{BRIDGE_ADDR}",
                        *(f"DNS:{n}" for n in self.node_names)]
        certs = {
            "apiserver": ("/CN=kube-apiserver", apiserver_sans, "serverAuth"),
            "kubelet": ("/CN=corral-kubelet", kubelet_sans, "serverAuth"),
            "apiserver-kubelet-client": ("/O=system:masters/CN=kube-apiserver-kubelet-client",
                                         [], "clientAuth"),
        }
        for name, (subject, sans, usage) in certs.items():
            ext = p / f"{name}.ext"
            lines = ["basicConstraints=critical,CA:FALSE",
                     "keyUsage=critical,digitalSignature,keyEncipherment",
                     f"extendedKeyUsage={usage}"]
            if sans:
                lines.append("subjectAltName=" + ",".join(sans))
            ext.write_text("\n".join(lines) + "\n")
            self._openssl("req", "-new", *ec, "-keyout", str(p / f"{name}.key"),
                          "-out", str(p / f"{name}.csr"), "-subj", subject)
            self._openssl("x509", "-req", "-in", str(p / f"{name}.csr"), "-CA", str(p / "ca.crt"),
                          "-CAkey", str(p / "ca.key"), "-CAcreateserial", "-days", "3650",
                          "-extfile", str(ext), "-out", str(p / f"{name}.crt"))
        self._openssl("genrsa", "-out", str(p / "sa.key"), "2048")
        self._openssl("rsa", "-in", str(p / "sa.key"), "-pubout", "-out", str(p / "sa.pub"))
        # controller-runtime webhook servers (Kueue, JobSet) read tls.crt / tls.key from a dir.
        webhook = p / "webhook"
        webhook.mkdir()
        shutil.copy(p / "apiserver.crt", webhook / "tls.crt")
        shutil.copy(p / "apiserver.key", webhook / "tls.key")
        # Kueue's metrics certificates, shown at their fixed path by an overlay on /etc.
        upper = self.state_dir / "kueue-etc" / "upper"
        certs_dir = upper / KUEUE_METRICS_CERTS.removeprefix("/etc/")
        certs_dir.mkdir(parents=True)
        (self.state_dir / "kueue-etc" / "work").mkdir()
        shutil.copy(p / "apiserver.crt", certs_dir / "tls.crt")
        shutil.copy(p / "apiserver.key", certs_dir / "tls.key")
        for key in p.glob("*.key"):
            key.chmod(0o600)

    def _write_auth(self) -> None:
        admin, nobody = secrets.token_hex(16), secrets.token_hex(16)
        (self.state_dir / "admin-token").write_text(admin + "\n")
        tokens = self.state_dir / "tokens.csv"
        tokens.write_text(f'{admin},admin,corral-admin,"system:masters"\n'
                          f"{nobody},corral-nobody,corral-nobody\n")
        tokens.chmod(0o600)
        ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
        for path, user, token in ((self.kubeconfig, "admin", admin),
                                  (self.restricted_kubeconfig, "corral-nobody", nobody)):
            path.write_text(f"""\
apiVersion: v1
kind: Config
clusters:
- name: corral
  cluster:
    server: {self.server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: corral
  context:
    cluster: corral
    user: {user}
current-context: corral
""")
            path.chmod(0o600)

    def _write_configs(self) -> None:
        c = self.config_dir
        (c / "volcano-scheduler.yaml").write_text(VOLCANO_SCHEDULER_CONF)
        webhook_certs = self.pki / "webhook"
        (c / "kueue.yaml").write_text(f"""\
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
health:
  healthProbeBindAddress: {LOOPBACK}:{KUEUE_HEALTH_PORT}
metrics:
  bindAddress: {LOOPBACK}:{KUEUE_METRICS_PORT}
webhook:
  host: {LOOPBACK}
  port: {KUEUE_WEBHOOK_PORT}
  certDir: {webhook_certs}
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
manageJobsWithoutQueueName: false
clientConnection:
  qps: 50
  burst: 100
integrations:
  frameworks:
  - batch/job
  - jobset.x-k8s.io/jobset
""")
        (c / "jobset.yaml").write_text(f"""\
apiVersion: config.jobset.x-k8s.io/v1alpha1
kind: Configuration
health:
  healthProbeBindAddress: {LOOPBACK}:{JOBSET_HEALTH_PORT}
metrics:
  bindAddress: {LOOPBACK}:{JOBSET_METRICS_PORT}
webhook:
  host: {LOOPBACK}
  port: {JOBSET_WEBHOOK_PORT}
  certDir: {webhook_certs}
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
""")

    def _make_network(self) -> None:
        # Pods get a default route to the bridge's address; with forwarding off in the host
        # that is as far as their packets go. With it on they could leave the machine.
        if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "0":
            raise RuntimeError("net.ipv4.ip_forward is on: pod traffic could be routed off the "
                               "machine; the Kubernetes test cluster needs it off")
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            _run("ip", "link", "delete", BRIDGE)  # ours (down checked the owner), left behind
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "link", "set", BRIDGE, "alias", str(self.state_dir))  # _foreign_cluster_up
        _run("ip", "addr", "add", f"{BRIDGE_ADDR}/{BRIDGE_PREFIX}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")

    def _spawn(self, name: str, argv: list[str], mount_setup: str = "") -> int:
        """Start a process detached (`exec setsid`), output to log/NAME.log; with `mount_setup`
        (shell commands) in a private mount namespace. Records "PID COMM" in pids/NAME.pid."""
        log = self.log_dir / f"{name}.log"
        daemon = f"exec setsid {shlex.join(argv)} </dev/null >>{shlex.quote(str(log))} 2>&1"
        script = f"{mount_setup} {{ {daemon} & }} && echo $!"
        cmd = ["unshare", "--mount", "sh", "-c", script] if mount_setup else ["sh", "-c", script]
        pid = int(_run(*cmd).strip())
        comm = Path(argv[0]).name[:15]
        _wait(lambda: _comm(pid) == comm or not _alive(pid), 5, f"{name} did not exec")
        if not _alive(pid):
            raise RuntimeError(f"{name} exited at once; {log}:\n{self._tail(log)}")
        (self.pid_dir / f"{name}.pid").write_text(f"{pid} {comm}\n")
        return pid

    @staticmethod
    def _tail(log: Path, size: int = 3000) -> str:
        return log.read_text(errors="replace")[-size:] if log.exists() else ""

    def _wait_healthy(self, name: str, check: Callable[[], bool], timeout: float) -> None:
        pid, comm = _daemon_pids(self.pid_dir)[name]

        def ok() -> bool:
            if not _running(pid, comm):
                log = self.log_dir / f"{name}.log"
                raise RuntimeError(f"{name} exited; {log}:\n{self._tail(log)}")
            try:
                return check()
            except (OSError, RuntimeError, ValueError):
                return False

        _wait(ok, timeout, f"{name} not healthy", lambda: self._tail(self.log_dir / f"{name}.log"))

    @staticmethod
    def _http_ok(url: str) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def _start_etcd(self) -> None:
        data = self.state_dir / "etcd"
        data.mkdir(exist_ok=True)
        client = f"http://{LOOPBACK}:{ETCD_PORT}"
        peer = f"http://{LOOPBACK}:{ETCD_PEER_PORT}"
        argv = [
            shutil.which("etcd") or "/usr/bin/etcd", "--name", "corral",
            "--data-dir", str(data / "data"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"corral={peer}", "--initial-cluster-state", "new",
            "--log-level", "warn", "--quota-backend-bytes", str(2 << 30),
        ]
        # Data on a tmpfs private to etcd's mount namespace: no fsync cost, gone with etcd.
        setup = f"mount -t tmpfs -o size=2g,mode=0700 corral-etcd {shlex.quote(str(data))} &&"
        self._spawn("etcd", argv, mount_setup=setup)
        self._wait_healthy("etcd", lambda: self._http_ok(f"{client}/health"), 20)

    def _cp(self, command: str) -> list[str]:
        return [str(self.bin / "bin" / "controlplane"), command]

    def _start_apiserver(self) -> None:
        p = self.pki
        argv = [
            *self._cp("apiserver"),
            f"--etcd-servers=http://{LOOPBACK}:{ETCD_PORT}",
            f"--bind-address={LOOPBACK}", f"--advertise-address={LOOPBACK}",
            f"--secure-port={APISERVER_PORT}",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            # as kubeadm sets them; without, the controllers log errors about this CA
            f"--requestheader-client-ca-file={p / 'ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--token-auth-file={self.state_dir / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false",
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
            "--allow-privileged=true",
            "--profiling=false",
            f"--cert-dir={self.state_dir / 'run'}",
            "--v=1",
        ]
        self._spawn("apiserver", argv)
        self._wait_healthy("apiserver", lambda: self._get_raw("/readyz") == b"ok", 90)

    def _start_controllers(self) -> None:
        p = self.pki
        common = [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            f"--bind-address={LOOPBACK}", "--leader-elect=false",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            "--profiling=false", "--v=1",
        ]
        self._spawn("controller-manager", [
            *self._cp("controller-manager"), *common,
            f"--secure-port={CONTROLLER_MANAGER_PORT}",
            f"--service-account-private-key-file={p / 'sa.key'}",
            f"--root-ca-file={p / 'ca.crt'}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allocate-node-cidrs=false",
            "--controllers=*,-nodeipam",
        ])
        self._spawn("scheduler", [*self._cp("scheduler"), *common,
                                  f"--secure-port={SCHEDULER_PORT}"])
        for name, port in (("controller-manager", CONTROLLER_MANAGER_PORT),
                           ("scheduler", SCHEDULER_PORT)):
            url = f"https://{LOOPBACK}:{port}/healthz"
            self._wait_healthy(name, lambda url=url: self._http_ok(url), 30)

    def _install_crds(self) -> None:
        crds = self.bin / "crds"
        files = sorted(crds.glob("*/*.yaml"))
        args = [a for f in files for a in ("-f", str(f))]
        _run(str(self.kubectl), f"--kubeconfig={self.kubeconfig}", "apply", "--server-side",
             "--force-conflicts", *args)
        names = _run(str(self.kubectl), f"--kubeconfig={self.kubeconfig}", "get", "crd",
                     "-o", "name").split()

        def established() -> bool:
            items = self.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")["items"]
            done = {
                i["metadata"]["name"] for i in items
                if any(c["type"] == "Established" and c["status"] == "True"
                       for c in (i.get("status") or {}).get("conditions") or [])
            }
            return {n.split("/", 1)[1] for n in names} <= done

        _wait(established, 60, "CRDs not Established")
        for ns in ("volcano-system", "kueue-system", "jobset-system"):
            self.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": ns}})

    def _start_addons(self) -> None:
        kc = f"--kubeconfig={self.kubeconfig}"
        b = self.bin / "bin"
        self._spawn("vc-scheduler", [
            str(b / "vc-scheduler"), kc,
            f"--scheduler-conf={self.config_dir / 'volcano-scheduler.yaml'}",
            "--scheduler-name=volcano", "--default-queue=default",
            "--leader-elect=false", "--schedule-period=200ms",
            f"--listen-address={LOOPBACK}:{VOLCANO_SCHEDULER_METRICS_PORT}",
            f"--healthz-address={LOOPBACK}:{VOLCANO_SCHEDULER_HEALTH_PORT}",
            "--enable-healthz=true", "--enable-metrics=false",
            f"--cache-dump-dir={self.state_dir / 'run'}", "--v=2",
        ])
        self._spawn("vc-controller-manager", [
            str(b / "vc-controller-manager"), kc, "--scheduler-name=volcano",
            "--leader-elect=false",
            f"--listen-address={LOOPBACK}:{VOLCANO_CONTROLLER_METRICS_PORT}",
            f"--healthz-address={LOOPBACK}:{VOLCANO_CONTROLLER_HEALTH_PORT}",
            "--enable-healthz=true", "--enable-metrics=false", "--v=2",
        ])
        upper = self.state_dir / "kueue-etc" / "upper"
        work = self.state_dir / "kueue-etc" / "work"
        overlay = f"lowerdir=/etc,upperdir={upper},workdir={work}"
        self._spawn("kueue", [
            str(b / "kueue"), kc, f"--config={self.config_dir / 'kueue.yaml'}",
            "--feature-gates=VisibilityOnDemand=false",
            f"--visibility-server-port={KUEUE_VISIBILITY_PORT}",
            "--zap-log-level=2",
        ], mount_setup=f"mount -t overlay corral-kueue-etc -o {shlex.quote(overlay)} /etc &&")
        self._spawn("jobset", [
            str(b / "jobset"), kc, f"--config={self.config_dir / 'jobset.yaml'}",
            "--zap-log-level=2",
        ])
        checks = {
            "vc-scheduler": f"http://{LOOPBACK}:{VOLCANO_SCHEDULER_HEALTH_PORT}/healthz",
            "vc-controller-manager": f"http://{LOOPBACK}:{VOLCANO_CONTROLLER_HEALTH_PORT}/healthz",
            "kueue": f"http://{LOOPBACK}:{KUEUE_HEALTH_PORT}/readyz",
            "jobset": f"http://{LOOPBACK}:{JOBSET_HEALTH_PORT}/readyz",
        }
        for name, url in checks.items():
            self._wait_healthy(name, lambda url=url: self._http_ok(url), 60)
        self._register_webhooks()
        # Volcano's scheduler makes the root and default queues as it starts; as its Helm
        # chart would, make sure they are there.
        for name, reclaimable in (("root", False), ("default", True)):
            self.create("/apis/scheduling.volcano.sh/v1beta1/queues", {
                "apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "Queue",
                "metadata": {"name": name},
                "spec": {"reclaimable": reclaimable, "weight": 1},
            })

    def _register_webhooks(self) -> None:
        """Kueue's and JobSet's admission webhooks, from their manifests (kept with the CRDs),
        pointed at their servers on 127.0.0.1: Kueue suspends queued Jobs as they are created,
        JobSet defaults JobSets (Indexed jobs, DNS hostnames, success policy). Volcano's
        admission server needs its Helm chart's webhook objects and is not run."""
        ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
        for addon, (port, groups) in WEBHOOKS.items():
            manifest = self.bin / "webhooks" / f"{addon}.yaml"
            out = _run(str(self.kubectl), f"--kubeconfig={self.kubeconfig}", "create",
                       "--dry-run=client", "-o", "json", "-f", str(manifest))
            for item in _json_documents(out):
                hooks = []
                for hook in item.get("webhooks") or []:
                    hook_groups = {g for r in hook.get("rules", []) for g in r["apiGroups"]}
                    if not hook_groups <= groups:
                        continue
                    path = hook["clientConfig"]["service"]["path"]
                    hook["clientConfig"] = {"url": f"https://{LOOPBACK}:{port}{path}",
                                            "caBundle": ca}
                    if addon == "jobset" and "" in hook_groups:  # pods: JobSet's only (chart)
                        hook["objectSelector"] = {"matchExpressions": [
                            {"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"}]}
                    hooks.append(hook)
                plural = item["kind"].lower() + "s"
                item["metadata"] = {"name": f"corral-{addon}-{item['metadata']['name']}"}
                item["webhooks"] = hooks
                self.create(f"/apis/admissionregistration.k8s.io/v1/{plural}", item)

    def _start_kubelets(self) -> None:
        if not FAKE_KUBELET.exists():
            raise RuntimeError(f"{FAKE_KUBELET} is missing: the nodes need it")
        p = self.pki
        for i, name in enumerate(self.node_names, start=1):
            state = self.kubelet_dir / name
            state.mkdir(parents=True)
            self._spawn(f"kubelet-{name}", [
                sys.executable, str(FAKE_KUBELET), "--kubeconfig", str(self.kubeconfig),
                "--node", name, "--cpu", str(self.node_cpus), "--memory", self.node_memory,
                "--pod-cidr", f"10.78.{i}.0/24", "--bridge", BRIDGE, "--gateway", BRIDGE_ADDR,
                "--port", str(KUBELET_BASE_PORT + i),
                "--tls-cert", str(p / "kubelet.crt"), "--tls-key", str(p / "kubelet.key"),
                "--state-dir", str(state),
            ])
        _wait(self._nodes_ready_or_raise, 60, "nodes not Ready", self._nodes_detail)

    def _nodes_ready_or_raise(self) -> bool:
        pids = _daemon_pids(self.pid_dir)
        for name in self.node_names:
            if not _running(*pids[f"kubelet-{name}"]):
                log = self.log_dir / f"kubelet-{name}.log"
                raise RuntimeError(f"kubelet-{name} exited; {log}:\n{self._tail(log)}")
        try:
            return self._nodes_ready()
        except (OSError, RuntimeError, ValueError):
            return False

    def _nodes_detail(self) -> str:
        try:
            nodes = self.get("/api/v1/nodes")["items"]
        except (OSError, RuntimeError, ValueError) as exc:
            return str(exc)
        return ", ".join(f"{n['metadata']['name']}: {self._node_condition(n)}" for n in nodes)

    def _delete_pod_namespaces(self) -> None:
        """The pod network namespaces (ck-*) the kubelets recorded and left behind: stop what
        still runs in them, then delete them (their veths go with them)."""
        recorded: list[str] = []
        for path in self.kubelet_dir.glob("*/netns") if self.kubelet_dir.is_dir() else []:
            recorded += [ns for ns in path.read_text().split() if ns.startswith(POD_NETNS_PREFIX)]
        present = set(_run("ip", "netns", "list", check=False).split())
        ours = [ns for ns in dict.fromkeys(recorded) if ns in present]
        _stop_all([(pid, _comm(pid)) for pid in _pids_in_netns(ours)], grace=2, kill_wait=5.0)
        for ns in ours:
            _run("ip", "netns", "delete", ns, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("command", choices=["up", "down", "status", "build"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--node-cpus", type=int, default=4)
    parser.add_argument("--node-memory", default="8Gi")
    args = parser.parse_args(argv)
    cluster = K8sCluster(args.state_dir, nodes=args.nodes, node_cpus=args.node_cpus,
                         node_memory=args.node_memory)
    start = time.monotonic()
    try:
        if args.command == "build":
            print(build())
        elif args.command == "up":
            cluster.up()
        elif args.command == "down":
            cluster.down()
        else:
            print(cluster.status())
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.command == "up":
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in cluster.env.items()))
        print(f"export PATH={shlex.quote(str(cluster.bin / 'bin'))}:$PATH  # kubectl")
        print(f"# nodes: {' '.join(cluster.node_names)}; up in {time.monotonic() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
