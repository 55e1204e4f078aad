"""``python -m corral.runtime.ray_node PROGRAM...``: one node of a ``--launcher ray`` job.

Node 0 starts the Ray head (GCS on ``MASTER_ADDR:MASTER_PORT``), waits until every node of
the job has joined (each offers a resource ``corral_node_<N>`` that names it), runs PROGRAM
as the driver with ``RAY_ADDRESS`` set, then stops Ray and exits with the driver's exit code.
Node N > 0 waits for the head, starts a Ray worker node and keeps it until the head ends
(exit 0) or its own Ray processes die (exit 1: the job fails and names this node).

Ports: a job owns :data:`corral.ports.PORT_BLOCK` ports from ``MASTER_PORT``.
Each node's raylet, object manager, dashboard agent, runtime-env agent and metrics export
get fixed ports in that block (emulated nodes sharing a host each get their own six), the
head's client server the block's last port; worker processes take ports from the kernel.
Authentication: Ray's token mode, with a token made by node 0 for this job alone and kept in
the run directory (``ray/auth_token``, mode 0600), which the other nodes read (a shared
filesystem, as on the local backend and Slurm); the driver gets it the same way, so whatever
token a user keeps in ``~/.ray`` plays no part. Ray's files live in a short directory under
/tmp (unix sockets allow ~100 characters) and
its logs are copied into the job's run directory (``ray/node-N``) when the node ends.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from corral.environment import JobEnvironment, read_environment
from corral.ports import PORT_BLOCK

PORTS_PER_NODE = 6
JOIN_TIMEOUT = float(os.environ.get("CORRAL_RAY_JOIN_TIMEOUT", "120"))
STOP_GRACE = 3.0  # the driver has ended: only log flushing is lost past this
POLL = 0.25


class RayNodeError(Exception):
    pass


def say(message: str) -> None:
    print(f"corral: ray: {message}", flush=True)


def node_ports(here: JobEnvironment) -> dict[str, int]:
    """This node's Ray ports, in the job's port block."""
    shared_host = len(set(here.hosts)) <= 1
    slot = here.node_rank if shared_host else 0
    first = here.master_port + 1 + PORTS_PER_NODE * slot
    if first + PORTS_PER_NODE > here.master_port + PORT_BLOCK - 1:
        most = (PORT_BLOCK - 2) // PORTS_PER_NODE
        raise RayNodeError(f"node {here.node_rank} needs ports beyond the job's block of "
                           f"{PORT_BLOCK}: at most {most} nodes can share one host")
    names = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")
    return {name: first + i for i, name in enumerate(names)}


def address_of(host: str) -> str:
    """An IP address: Ray wants addresses, and Slurm names its nodes."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def start_command(here: JobEnvironment, temp_dir: str) -> list[str]:
    """``ray start ... --block`` for this node (head on node 0)."""
    host = here.hosts[here.node_rank] if here.node_rank < len(here.hosts) else "127.0.0.1"
    host = address_of(host)
    argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
            "--node-ip-address", host, "--temp-dir", temp_dir, "--disable-usage-stats",
            "--resources", json.dumps({f"corral_node_{here.node_rank}": 1}),
            "--min-worker-port", "0", "--max-worker-port", "0"]
    for name, port in node_ports(here).items():
        argv += [f"--{name}", str(port)]
    for variable, flag in (("CORRAL_RAY_NUM_CPUS", "--num-cpus"),
                           ("CORRAL_RAY_NUM_GPUS", "--num-gpus"),
                           ("CORRAL_RAY_OBJECT_STORE_BYTES", "--object-store-memory")):
        if os.environ.get(variable):
            argv += [flag, os.environ[variable]]
    if here.node_rank == 0:
        argv += ["--head", "--port", str(here.master_port), "--include-dashboard", "false",
                 "--ray-client-server-port", str(here.master_port + PORT_BLOCK - 1)]
    else:
        argv += ["--address", f"{address_of(here.master_addr)}:{here.master_port}"]
    return argv


def use_job_token(here: JobEnvironment, create: bool) -> Path:
    """Point this process and its children (Ray, the driver) at the job's Ray token."""
    if not here.run_dir:
        raise RayNodeError("CORRAL_RUN_DIR is not set: there is nowhere to keep the job's "
                           "Ray token")
    token = Path(here.run_dir) / "ray" / "auth_token"
    if create:
        token.parent.mkdir(parents=True, exist_ok=True)
        token.unlink(missing_ok=True)  # a retried attempt gets a token of its own
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    return token


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class RayProcesses:
    """``ray start --block`` in a session of its own; stopped as one group."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         env=env)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM (``ray start --block`` stops what it started), then SIGKILL the group."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            try:  # the group may outlive its leader
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("  " + line for line in text[-lines:])


def wait_for_nodes(address: str, count: int, ray_proc: RayProcesses) -> None:
    """Return once ``count`` nodes (corral_node_0 ... N-1) are alive in the cluster.

    Asked of the GCS directly (Ray's GcsClient; a driver's ``ray.init`` would cost seconds).
    """
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    deadline = time.monotonic() + JOIN_TIMEOUT
    gcs = None
    while True:
        joined: set[str] = set()
        try:
            gcs = gcs or GcsClient(address=address)
            for node in gcs.get_all_node_info(timeout=5).values():
                if node.state == type(node).ALIVE:
                    joined.update(k for k in node.resources_total if k.startswith("corral_node_"))
        except Exception:  # the GCS is not serving yet
            gcs = None
        missing = [n for n in range(count) if f"corral_node_{n}" not in joined]
        if not missing:
            return
        if not ray_proc.alive():
            raise RayNodeError("the head's Ray processes ended:\n" + ray_proc.tail())
        if time.monotonic() > deadline:
            names = ", ".join(str(n) for n in missing)
            raise RayNodeError(
                f"node(s) {names} did not join the Ray cluster at {address} within "
                f"{JOIN_TIMEOUT:g}s (CORRAL_RAY_JOIN_TIMEOUT); see corral logs JOB "
                f"--rank {missing[0]}")
        time.sleep(POLL)


def keep_logs(temp_dir: str, here: JobEnvironment) -> None:
    """Copy Ray's log files of this node into the run directory, then remove Ray's files."""
    session = Path(temp_dir) / "session_latest" / "logs"
    if here.run_dir and session.is_dir():
        target = Path(here.run_dir) / "ray" / f"node-{here.node_rank}"
        target.mkdir(parents=True, exist_ok=True)
        for item in session.iterdir():
            if item.is_file() and item.suffix in (".log", ".out", ".err"):
                shutil.copy2(item, target / item.name)
        say(f"Ray's logs of node {here.node_rank} are kept in {target}")
    shutil.rmtree(temp_dir, ignore_errors=True)


def run_head(here: JobEnvironment, program: Sequence[str], ray_proc: RayProcesses) -> int:
    address = f"{address_of(here.master_addr)}:{here.master_port}"
    started = time.monotonic()
    wait_for_nodes(address, here.num_nodes, ray_proc)
    say(f"cluster of {here.num_nodes} node(s) up at {address} in "
        f"{time.monotonic() - started:.1f}s; running the driver")
    driver = subprocess.Popen(list(program), env={**os.environ, "RAY_ADDRESS": address})
    return driver.wait()


def run_worker(here: JobEnvironment, ray_proc: RayProcesses) -> int:
    head = (here.master_addr, here.master_port)
    gone = 0
    while True:
        if not ray_proc.alive():
            say(f"this node's Ray processes ended (exit {ray_proc.proc.returncode}):\n"
                + ray_proc.tail())
            return 1
        gone = 0 if reachable(*head) else gone + 1
        if gone >= 2:  # the head has ended: this node's part is over
            # Without its head a raylet only waits to reconnect: nothing to stop gently.
            ray_proc.stop(grace=1.0)
            return 0
        time.sleep(POLL)


def main(argv: Sequence[str] | None = None) -> int:
    program = list(sys.argv[1:] if argv is None else argv)
    if not program:
        print("usage: python -m corral.runtime.ray_node PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    here = read_environment()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    temp_dir = tempfile.mkdtemp(prefix="corral-ray-", dir="/tmp")
    ray_proc: RayProcesses | None = None
    try:
        token = use_job_token(here, create=here.node_rank == 0)
        if here.node_rank > 0:
            deadline = time.monotonic() + JOIN_TIMEOUT
            while not (reachable(here.master_addr, here.master_port) and token.exists()):
                if time.monotonic() > deadline:
                    why = ("did not come up" if not reachable(here.master_addr,
                                                              here.master_port)
                           else f"is up, but its token {token} is not visible here (Ray "
                                "through corral needs a run directory shared by the nodes)")
                    raise RayNodeError(f"the head (node 0) at {here.master_addr}:"
                                       f"{here.master_port} {why} within {JOIN_TIMEOUT:g}s; "
                                       "see corral logs JOB --rank 0")
                time.sleep(POLL)
        ray_proc = RayProcesses(start_command(here, temp_dir), Path(temp_dir) / "start.log")
        if here.node_rank == 0:
            return run_head(here, program, ray_proc)
        return run_worker(here, ray_proc)
    except RayNodeError as exc:
        say(str(exc))
        return 1
    finally:
        if ray_proc is not None:
            ray_proc.stop()
        keep_logs(temp_dir, here)


if __name__ == "__main__":
    sys.exit(main())
