"""A real multi-node Slurm cluster for tests, made of Linux network namespaces on one machine.

Layout (nothing routes off the machine; ip_forward is left alone and no namespace has a
default route)::

    host netns    corral-br0 10.77.0.1/24    clients: sbatch/squeue/scontrol/scancel/sacct -c/srun
      |- netns corral-ctl    eth0 10.77.0.10  hostname "controller": slurmctld, sshd on :22
      |- netns corral-node1  eth0 10.77.0.11  hostname "node1": slurmd
      |- netns corral-node2  eth0 10.77.0.12  hostname "node2": slurmd
      '- netns corral-node3  eth0 10.77.0.13  hostname "node3": slurmd

Each daemon runs under ``nsenter --net=/run/netns/NAME unshare --uts --mount`` (not
``ip netns exec``, which remounts /sys and breaks slurmd 22.05). Inside its private mount
namespace the state dir's ``hosts`` file is bind-mounted on /etc/hosts (so torchrun can resolve
node names) and ``<state>/etc`` on /etc/slurm (so sbatch/srun find slurm.conf without
SLURM_CONF). The host's own /etc is never changed. All namespaces share the file system and the
PID namespace, and one munged on the default socket serves them all.

State dir (default /tmp/corral-slurm)::

    etc/slurm.conf  hosts  jobcomp.txt (read by ``sacct -c``)
    pids/NAME.pid   "PID COMM" of every daemon this module started; ``down`` stops exactly those
    log/  spool/node*/  ctld/  tmp_node*/ (TmpFS per node, PMIx needs it)
    ssh/  id_ed25519{,.pub} host_ed25519 authorized_keys sshd_config ssh_config

CLI: ``python tests/infra/slurm_cluster.py up|down|status [--state-dir DIR] [--install]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

try:  # imported as infra.<module> by pytest (tests/ on sys.path), or run as a script
    from infra.hostprocs import alive as _alive
    from infra.hostprocs import comm as _comm
    from infra.hostprocs import daemon_pids as _daemon_pids
    from infra.hostprocs import foreign_cluster_up as _foreign_cluster_up
    from infra.hostprocs import pids_in_netns as _pids_in_netns
    from infra.hostprocs import reap as _reap
    from infra.hostprocs import run as _run
    from infra.hostprocs import running as _running
    from infra.hostprocs import start_fresh as _start_fresh
    from infra.hostprocs import stat as _stat
    from infra.hostprocs import stop_all as _stop_all
    from infra.hostprocs import wait_until as _wait
except ImportError:
    from hostprocs import alive as _alive  # type: ignore[no-redef]
    from hostprocs import comm as _comm  # type: ignore[no-redef]
    from hostprocs import daemon_pids as _daemon_pids  # type: ignore[no-redef]
    from hostprocs import foreign_cluster_up as _foreign_cluster_up  # type: ignore[no-redef]
    from hostprocs import pids_in_netns as _pids_in_netns  # type: ignore[no-redef]
    from hostprocs import reap as _reap  # type: ignore[no-redef]
    from hostprocs import run as _run  # type: ignore[no-redef]
    from hostprocs import running as _running  # type: ignore[no-redef]
    from hostprocs import start_fresh as _start_fresh  # type: ignore[no-redef]
    from hostprocs import stat as _stat  # type: ignore[no-redef]
    from hostprocs import stop_all as _stop_all  # type: ignore[no-redef]
    from hostprocs import wait_until as _wait  # type: ignore[no-redef]

DEFAULT_STATE_DIR = Path("/tmp/corral-slurm")
BRIDGE = "corral-br0"
SUBNET = "10.77.0"
HOST_ADDR = f"{SUBNET}.1"
CONTROLLER = "controller"
CONTROLLER_NS = "corral-ctl"
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
APT_PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge", "openmpi-bin", "libopenmpi-dev"]
APT_PACKAGES += ["openssh-server", "openssh-client", "rsync"]
SBIN = "/usr/sbin/"
MUNGED_ARGV = ["setpriv", "--reuid=munge", "--regid=munge", "--init-groups", SBIN + "munged", "-F"]
REQUIRED_BINARIES = ["slurmctld", "slurmd", "sbatch", "munged", "sshd", "ssh-keygen", "mpirun"]


def _ppid(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[1]) if len(fields) > 1 else 0


def install_packages() -> None:
    """apt-get install whatever the cluster needs, if any binary is missing."""
    if all(shutil.which(b) or Path(f"/usr/sbin/{b}").exists() for b in REQUIRED_BINARIES):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run("apt-get", "update", "-q", env=env)
    _run("apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES, env=env)


class SlurmCluster:
    """slurmctld + sshd in one namespace, one slurmd per compute-node namespace."""

    def __init__(self, state_dir: Path, nodes: int = 3, cpus_per_node: int = 2) -> None:
        if not 1 <= nodes <= 99 or cpus_per_node < 1:
            raise ValueError("need 1 to 99 nodes and at least 1 CPU per node")
        self.state_dir = Path(state_dir).resolve()
        self.cpus_per_node = cpus_per_node
        self.node_names: list[str] = [f"node{i}" for i in range(1, nodes + 1)]
        self.controller_addr = f"{SUBNET}.10"
        self.ssh_target = f"root@{self.controller_addr}"
        self.conf = self.state_dir / "etc" / "slurm.conf"
        self.hosts_file = self.state_dir / "hosts"
        self.ssh_dir = self.state_dir / "ssh"
        self.ssh_config = self.ssh_dir / "ssh_config"
        self.pid_dir = self.state_dir / "pids"
        self.log_dir = self.state_dir / "log"

    # ----------------------------------------------------------------- public API
    @property
    def env(self) -> dict[str, str]:
        """Environment a client on the host needs (merge into os.environ)."""
        return {"SLURM_CONF": str(self.conf)}

    def node_addr(self, name: str) -> str:
        return f"{SUBNET}.{11 + self.node_names.index(name)}"

    def up(self) -> None:
        """Bring the cluster up; reuse it when it is already up and every node is idle."""
        if self.healthy(settle=10):
            return
        _start_fresh(BRIDGE, self.state_dir, self.down, self._start)

    def _start(self) -> None:
        for sub in ("ctld", "spool", "run", "log", *(f"tmp_{n}" for n in self.node_names)):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        for sub in ("etc", "ctld", "run", "pids", "log", "ssh"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        for name in self.node_names:
            (self.state_dir / "spool" / name).mkdir(parents=True)
            (self.state_dir / f"tmp_{name}").mkdir()
        (self.state_dir / "jobcomp.txt").write_text("")
        self._write_configs()
        self._ensure_munged()
        self._make_network()
        conf = str(self.conf)
        sshd_config = str(self.ssh_dir / "sshd_config")
        self._spawn("slurmctld", CONTROLLER_NS, CONTROLLER, [SBIN + "slurmctld", "-D", "-f", conf])
        self._spawn(
            "sshd", CONTROLLER_NS, CONTROLLER, [SBIN + "sshd", "-D", "-e", "-f", sshd_config]
        )
        _wait(self._controller_up, 10, "slurmctld did not answer `scontrol ping`")
        for name in self.node_names:
            argv = [SBIN + "slurmd", "-D", "-N", name, "-f", conf]
            self._spawn(f"slurmd-{name}", f"corral-{name}", name, argv)
        self.wait_idle()
        # slurmctld's first scheduling pass comes ~3 s after its start (it logs its
        # SchedulerParameters then); a job submitted before it waits for it anyway.
        ctld_log = self.log_dir / "slurmctld.log"
        with contextlib.suppress(TimeoutError):
            _wait(lambda: "SchedulerParameters=" in ctld_log.read_text(), 6, "scheduler")

    def down(self) -> None:
        """Cancel all jobs; stop (by PID) what still runs in our namespaces (slurmstepd, job
        tasks, ssh sessions), then every daemon started here; delete the namespaces (their
        /run/netns bind mounts), veths and bridge; munged last, only if this module started it."""
        daemons = _daemon_pids(self.pid_dir)
        munged = daemons.pop("munged", None)
        if "slurmctld" in daemons and _running(*daemons["slurmctld"]) and self.conf.exists():
            self._slurm("scancel", "--user=root", check=False)
            try:
                _wait(self._no_running_jobs, 3, "jobs still running")
            except TimeoutError:
                pass  # killed below
        netns_file = self.state_dir / "netns"
        recorded = netns_file.read_text().split() if netns_file.exists() else []
        present = set(_run("ip", "netns", "list", check=False).split())
        ours = [ns for ns in dict.fromkeys([*recorded, *self._namespaces()]) if ns in present]
        foreign = _foreign_cluster_up(BRIDGE, self.state_dir)
        if foreign:
            ours = []  # the network belongs to another cluster that is still up
        daemon_pids = {pid for pid, _ in daemons.values()}
        leftovers = [  # job steps and tasks first; daemons' own helpers go with them
            p for p in _pids_in_netns(ours) if not {p, _ppid(p)} & daemon_pids
        ]
        _stop_all([(pid, _comm(pid)) for pid in leftovers], grace=0.5)
        # slurmctld first: a stopping slurmd waits MessageTimeout for a stopping slurmctld
        ctld = daemons.get("slurmctld")
        _stop_all([ctld] if ctld else [], grace=5)
        _stop_all([proc for proc in daemons.values() if proc != ctld], grace=5)
        for name in daemons:
            (self.pid_dir / f"{name}.pid").unlink(missing_ok=True)
        _stop_all([(pid, _comm(pid)) for pid in _pids_in_netns(ours)], grace=0.5)
        for ns in ours:
            _run("ip", "netns", "delete", ns, check=False)
        for link in [*(self._veth(ns) for ns in ours), *([] if foreign else [BRIDGE])]:
            if Path(f"/sys/class/net/{link}").exists():
                _run("ip", "link", "delete", link, check=False)
        netns_file.unlink(missing_ok=True)
        if munged:
            _stop_all([munged], grace=5)
            (self.pid_dir / "munged.pid").unlink(missing_ok=True)

    def status(self) -> str:
        lines = []
        for name, (pid, comm) in _daemon_pids(self.pid_dir).items():
            state = "running" if _running(pid, comm) else "GONE"
            lines.append(f"{name:16} pid {pid:<8} {state} ({comm})")
        if not lines:
            return "down (no daemons recorded)"
        sinfo = self._slurm("sinfo", "-N", "-o", "%N %P %T %C", check=False)
        return "\n".join([*lines, "", sinfo.strip() or "(sinfo gave nothing)"])

    def healthy(self, settle: float = 0) -> bool:
        """Every daemon alive and, within `settle` s, every node idle."""
        pids = _daemon_pids(self.pid_dir)
        wanted = {"slurmctld", "sshd", *(f"slurmd-{n}" for n in self.node_names)}
        if not self.conf.exists() or not wanted <= pids.keys():
            return False
        if not MUNGE_SOCKET.exists() or not all(_running(*proc) for proc in pids.values()):
            return False
        try:
            self.wait_idle(settle)
        except TimeoutError:
            return False
        return True

    def crash_node(self, name: str) -> None:
        """A node loses power: its link goes down first (so its peers get no RST or FIN,
        as from a machine that is simply gone), then every process in its namespace
        (slurmd, job steps, tasks) is SIGKILLed. slurmctld notices when the node misses
        SlurmdTimeout; the job's other nodes wait for it as they would for a dead machine."""
        _run("ip", "-n", f"corral-{name}", "link", "set", "eth0", "down")
        pids = _pids_in_netns([f"corral-{name}"])
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            _reap(pid)
        (self.pid_dir / f"slurmd-{name}.pid").unlink(missing_ok=True)

    def restore_node(self, name: str, timeout: float = 60) -> None:
        """Power the node back on: its link up, its slurmd started; wait until every node
        is idle."""
        _run("ip", "-n", f"corral-{name}", "link", "set", "eth0", "up")
        conf = str(self.conf)
        self._spawn(f"slurmd-{name}", f"corral-{name}", name,
                    [SBIN + "slurmd", "-D", "-N", name, "-f", conf])
        with contextlib.suppress(TimeoutError):
            self.wait_idle(10)
            return
        self._slurm("scontrol", "update", f"NodeName={name}", "State=RESUME", check=False)
        self.wait_idle(timeout)

    def wait_idle(self, timeout: float = 30) -> None:
        """Wait until sinfo shows every node idle."""
        want = dict.fromkeys(self.node_names, "idle")
        states = self._node_states
        _wait(lambda: states() == want, timeout, "nodes not idle", lambda: repr(states()))

    # ----------------------------------------------------------------- internals
    def _slurm(self, *argv: str, check: bool = True) -> str:
        return _run(*argv, check=check, env={**os.environ, **self.env})

    def _controller_up(self) -> bool:
        return " is UP" in self._slurm("scontrol", "ping", check=False)

    def _no_running_jobs(self) -> bool:
        return not self._slurm("squeue", "-h", "-t", "R,CG,CF,S", check=False).strip()

    def _node_states(self) -> dict[str, str]:
        out = self._slurm("sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T", check=False)
        return dict(line.split(None, 1) for line in out.splitlines() if " " in line)

    @staticmethod
    def _veth(ns: str) -> str:
        return "crv-" + ns.removeprefix("corral-")  # host end; at most 15 characters

    def _namespaces(self) -> list[str]:
        return [CONTROLLER_NS, *(f"corral-{n}" for n in self.node_names)]

    def _make_network(self) -> None:
        (self.state_dir / "netns").write_text("\n".join(self._namespaces()) + "\n")
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "link", "set", BRIDGE, "alias", str(self.state_dir))  # see _foreign_cluster_up
        _run("ip", "addr", "add", f"{HOST_ADDR}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        addrs = [self.controller_addr, *(self.node_addr(n) for n in self.node_names)]
        for ns, addr in zip(self._namespaces(), addrs, strict=True):
            veth = self._veth(ns)
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run("ip", "link", "set", veth, "master", BRIDGE, "up")
            for cmd in (f"addr add {addr}/24 dev eth0", "link set eth0 up", "link set lo up"):
                _run("ip", "-n", ns, *cmd.split())

    def _spawn(
        self,
        name: str,
        netns: str | None,
        hostname: str | None,
        argv: list[str],
        comm: str | None = None,
    ) -> int:
        """Start a daemon in the foreground mode of its own, detached (`exec setsid`), inside
        `netns` with a private UTS + mount namespace; record "PID COMM" in pids/NAME.pid."""
        log = self.log_dir / f"{name}.out"
        daemon = f"exec setsid {shlex.join(argv)} </dev/null >>{shlex.quote(str(log))} 2>&1 &"
        if netns is None:
            cmd = ["sh", "-c", f"{daemon} echo $!"]
        else:
            setup = f"hostname {hostname} && mount --bind {self.hosts_file} /etc/hosts && "
            if Path("/etc/slurm").is_dir():  # slurm.conf at its default path, too
                setup += f"mount --bind {self.state_dir / 'etc'} /etc/slurm && "
            script = f"{setup}{{ {daemon} }} && echo $!"
            cmd = ["nsenter", f"--net=/run/netns/{netns}", "unshare", "--uts", "--mount"]
            cmd += ["sh", "-c", script]
        pid = int(_run(*cmd).strip())
        comm = (comm or Path(argv[0]).name)[:15]
        _wait(lambda: _comm(pid) == comm or not _alive(pid), 5, f"{name} did not exec")
        if not _alive(pid):
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{name} exited at once; {log}:\n{tail}")
        (self.pid_dir / f"{name}.pid").write_text(f"{pid} {comm}\n")
        return pid

    def _ensure_munged(self) -> None:
        """Use a working munged on the default socket, or start one (and record it)."""
        if MUNGE_SOCKET.exists() and self._munge_works():
            return
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            _run("mungekey", "--create", f"--keyfile={key}")
            shutil.chown(key, "munge", "munge")
            key.chmod(0o400)
        Path("/run/munge").mkdir(mode=0o755, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        self._spawn("munged", None, None, MUNGED_ARGV, comm="munged")
        _wait(self._munge_works, 10, "munged did not answer")

    @staticmethod
    def _munge_works() -> bool:
        enc = subprocess.run(["munge", "-n"], capture_output=True, check=False)
        if enc.returncode != 0:
            return False
        dec = subprocess.run(["unmunge"], input=enc.stdout, capture_output=True, check=False)
        return dec.returncode == 0

    def _write_configs(self) -> None:
        s = self.state_dir
        names = [
            (HOST_ADDR, f"corral-host {os.uname().nodename}"),
            (self.controller_addr, CONTROLLER),
        ]
        names += [(self.node_addr(n), n) for n in self.node_names]
        # The ::ffff: lines answer reverse lookups of v4-mapped peers (c10d warns otherwise).
        self.hosts_file.write_text(
            "127.0.0.1 localhost\n::1 localhost\n"
            + "".join(f"{addr} {name}\n::ffff:{addr} {name}\n" for addr, name in names)
        )
        node_lines = "\n".join(
            f"NodeName={n} NodeAddr={self.node_addr(n)} CPUs={self.cpus_per_node} State=UNKNOWN"
            for n in self.node_names
        )
        self.conf.write_text(f"""\
ClusterName=corral
SlurmctldHost={CONTROLLER}({self.controller_addr})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
# more CPUs than the machine has is fine: these nodes share its cores
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=2
MessageTimeout=5
InactiveLimit=0
MinJobAge=300
SlurmdTimeout=30
UnkillableStepTimeout=10
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={s}/jobcomp.txt
StateSaveLocation={s}/ctld
SlurmdSpoolDir={s}/spool/%n
SlurmctldPidFile={s}/run/slurmctld.pid
SlurmdPidFile={s}/run/slurmd-%n.pid
SlurmctldLogFile={s}/log/slurmctld.log
SlurmdLogFile={s}/log/slurmd-%n.log
# all nodes share /tmp; PMIx needs a directory per node
TmpFS={s}/tmp_%n
{node_lines}
PartitionName=debug Nodes={",".join(self.node_names)} Default=YES MaxTime=INFINITE State=UP
PartitionName=tiny Nodes={self.node_names[-1]} MaxTime=INFINITE State=UP
""")
        self._write_ssh()

    def _write_ssh(self) -> None:
        d = self.ssh_dir
        for key in ("host_ed25519", "id_ed25519"):
            if not (d / key).exists():
                _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key))
        (d / "authorized_keys").write_text((d / "id_ed25519.pub").read_text())
        (d / "authorized_keys").chmod(0o600)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        (d / "sshd_config").write_text(f"""\
ListenAddress {self.controller_addr}
Port 22
HostKey {d / "host_ed25519"}
AuthorizedKeysFile {d / "authorized_keys"}
PidFile none
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
SetEnv SLURM_CONF={self.conf}
Subsystem sftp internal-sftp
""")
        self.ssh_config.write_text(f"""\
Host *
  User root
  IdentityFile {d / "id_ed25519"}
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  BatchMode yes
  LogLevel ERROR
  ConnectTimeout 5
""")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--cpus-per-node", type=int, default=2)
    parser.add_argument("--install", action="store_true", help="apt-get install what is missing")
    args = parser.parse_args(argv)
    cluster = SlurmCluster(args.state_dir, nodes=args.nodes, cpus_per_node=args.cpus_per_node)
    start = time.monotonic()
    try:
        if args.install:
            install_packages()
        if args.command == "up":
            cluster.up()
        elif args.command == "down":
            cluster.down()
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.command == "up":
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in cluster.env.items()))
        print(f"# nodes: {' '.join(cluster.node_names)}")
        print(f"# ssh: ssh -F {cluster.ssh_config} {cluster.ssh_target}")
        print(f"# up in {time.monotonic() - start:.2f}s")
    elif args.command == "status":
        print(cluster.status())
    return 0


if __name__ == "__main__":
    sys.exit(main())
