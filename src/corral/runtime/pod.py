"""What every pod of a Kubernetes job runs: ``python3 -m corral.runtime.pod PLAN.json``.

The plan (rendered on the submitting machine, shipped in the job's ConfigMap) holds the
processes of every node; this pod is node ``$<node_rank_env>`` (``JOB_COMPLETION_INDEX``
for Jobs and JobSets, ``VK_TASK_INDEX`` for Volcano). The entry point:

1. unpacks the code package (``code.tar.gz``, from the ConfigMap or, with a package store,
   fetched from object storage with fsspec) into the working directory, when shipped;
2. writes the files the launcher needs (a hostfile) and a function job's payload;
3. starts corral's node agent (:mod:`corral.runtime.node`) for this node;
4. relays every rank's log file to the pod's output, each line labelled ``[rank N] `` (the
   node agent's and the launcher's own lines ``[node N] ``), and the agent's events as
   ``[corral] `` lines, so that the pod log — the only log Kubernetes keeps — tells the ranks
   apart and says which rank failed first;
5. when a rank fails, stops the node's other ranks (as ``srun --kill-on-bad-exit`` does; the
   workload controller then stops the other pods); after the ranks end, prints a
   distributed function's results as ``[result N] <base64>`` lines, and exits with the
   first failing rank's code.

SIGTERM (the pod being deleted) is passed to the node agent, which stops every rank within
the plan's grace period. Standard library only, like the node agent.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import IO, Any

LOG_NAME = re.compile(r"^(rank|node)-(\d+)\.log$")
LINE = re.compile(r"^\[(rank|node|corral|result) ?(\d*)\] ?(.*)$")
RELAY_STEP = 0.1


def node_rank(plan: dict[str, Any], env: dict[str, str]) -> int:
    """This pod's node, from the variable the workload controller sets."""
    name = plan["node_rank_env"]
    value = env.get(name, "")
    if not value.isdigit() or int(value) >= len(plan["nodes"]):
        raise SystemExit(f"corral: ${name} is {value!r}; expected a node number below "
                         f"{len(plan['nodes'])} (is this pod part of the job's workload?)")
    return int(value)


def unpack(package: str, workdir: str) -> None:
    """The code package into the working directory (paths cannot leave it)."""
    os.makedirs(workdir, exist_ok=True)
    with tarfile.open(package, "r:gz") as archive:
        if hasattr(tarfile, "data_filter"):  # Python 3.10.12+, 3.11.4+
            archive.extractall(workdir, filter="data")
            return
        root = os.path.realpath(workdir)
        for member in archive.getmembers():
            target = os.path.realpath(os.path.join(root, member.name))
            if not (member.isfile() or member.isdir()) or not target.startswith(root + os.sep):
                raise SystemExit(f"corral: the code package holds {member.name!r}, which "
                                 "would land outside the working directory")
        archive.extractall(root)


def fetch(url: str, path: str) -> str:
    """The code package from object storage (fsspec, with the pod's own credentials)."""
    try:
        import fsspec
    except ImportError:
        raise SystemExit(f"corral: the code package is at {url}, and fetching it needs fsspec "
                         "(and its filesystem, e.g. s3fs) in the image") from None
    with fsspec.open(url, "rb") as source, open(path, "wb") as target:
        while chunk := source.read(1 << 20):
            target.write(chunk)
    return path


class Relay:
    """Copies new complete lines of every log file in a directory to ``out``, labelled."""

    def __init__(self, log_dir: str, out: IO[str]) -> None:
        self.log_dir = log_dir
        self.out = out
        self.offsets: dict[str, int] = {}
        self.partial: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def poll(self, final: bool = False) -> None:
        with self.lock:
            try:
                names = sorted(os.listdir(self.log_dir))
            except FileNotFoundError:
                return
            for name in names:
                match = LOG_NAME.match(name)
                if match:
                    self._copy(name, f"[{match.group(1)} {match.group(2)}] ", final)
            self.out.flush()

    def _copy(self, name: str, label: str, final: bool) -> None:
        try:
            with open(os.path.join(self.log_dir, name), "rb") as handle:
                handle.seek(self.offsets.get(name, 0))
                data = handle.read()
        except FileNotFoundError:
            return
        self.offsets[name] = self.offsets.get(name, 0) + len(data)
        data = self.partial.pop(name, b"") + data
        lines = data.split(b"\n")
        rest = lines.pop()
        if rest and final:
            lines.append(rest)
        elif rest:
            self.partial[name] = rest
        for line in lines:
            self.out.write(label + line.decode("utf-8", errors="replace") + "\n")

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(RELAY_STEP):
            self.poll()

    def start(self) -> None:
        """Relay in a thread of its own until :meth:`finish`."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, args=(self._stop,), daemon=True)
        self._thread.start()

    def finish(self) -> None:
        """Stop the thread, then copy what is left, the last partial lines too."""
        self._stop.set()
        self._thread.join()
        self.poll(final=True)


def finish_node(rank: int, code: int, relay: Relay, run_dir: str, out: IO[str]) -> int:
    """The node's last lines, its function results, and its exit code (0-255)."""
    relay.finish()
    results(run_dir, out)
    say(out, f"node {rank} done: exit code {code}")
    return code if 0 <= code < 256 else 128 + signal.SIGTERM


def say(out: IO[str], text: str) -> None:
    out.write(f"[corral] {text}\n")
    out.flush()


def results(run_dir: str, out: IO[str]) -> None:
    """A distributed function's per-rank results, as lines the backend reads back."""
    folder = Path(run_dir, "results")
    for path in sorted(folder.glob("rank-*.pkl")) if folder.is_dir() else []:
        rank = path.stem.split("-")[1]
        out.write(f"[result {rank}] {base64.b64encode(path.read_bytes()).decode()}\n")
    out.flush()


def start_agent(node_plan: str, workdir: str, node_log: str) -> tuple[int, IO[str]]:
    """The node agent in a forked child (no second interpreter to start): its events come
    back on a pipe, its own messages go to the node log. Called before any thread starts."""
    read_end, write_end = os.pipe()
    log = os.open(node_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(write_end, 1)
            os.dup2(log, 2)
            os.chdir(workdir)
            sys.argv = [sys.argv[0], node_plan]
            from corral.runtime import node

            code = node.main([node_plan])
        except BaseException as exc:  # corral's own failure: say it in the node log
            os.write(2, f"corral: the node agent failed: {exc!r}\n".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    os.close(log)
    return pid, os.fdopen(read_end, encoding="utf-8")


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _wait(pid: int) -> int:
    """The agent's exit code (128 + N if a signal N ended it)."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def serve_mpirun(rank: int, nodes: int, rsh: dict[str, Any], log_dir: str, run_dir: str,
                 out: IO[str]) -> int:
    """A node whose ranks mpirun starts from node 0: serve its remote shell (once), relay the
    ranks' logs meanwhile, and end with what mpirun's daemon here ended with."""
    from corral.runtime import rsh as remote

    say(out, f"node {rank} of {nodes} on {os.uname().nodename}: waiting for mpirun on node 0 "
        f"(remote shell on port {rsh['port']})")
    stop = threading.Event()

    def on_term(*_: object) -> None:
        stop.set()
        remote.terminate()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    relay = Relay(log_dir, out)
    relay.start()
    code = remote.serve(str(rsh["token"]), int(rsh["port"]), stop)
    return finish_node(rank, code, relay, run_dir, out)


def prepare(run_dir: str, log_dir: str, workdir: str, package: str | None,
            payload: str | None) -> None:
    """The node's folders, its unpacked code package and a function job's payload."""
    for folder in (run_dir, log_dir, workdir):
        os.makedirs(folder, exist_ok=True)
    if package and os.path.exists(package):
        unpack(package, workdir)
    if payload and os.path.exists(payload):
        Path(run_dir, "function.pkl").write_bytes(Path(payload).read_bytes())


def run_node(rank: int, nodes: int, node: dict[str, Any], *, run_dir: str, log_dir: str,
             workdir: str, grace: float, rsh: dict[str, Any] | None = None,
             out: IO[str] | None = None) -> int:
    """Run this node's processes (as rendered for it) through the node agent, relaying their
    labelled lines to ``out``; return the node's exit code."""
    out = out or sys.stdout
    for path, text in node.get("files", {}).items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
    node_plan = os.path.join(run_dir, f"node-{rank}.json")
    Path(node_plan).write_text(json.dumps({**node, "log_dir": log_dir, "grace": grace}),
                               encoding="utf-8")
    if rsh and not node["processes"]:  # mpirun on node 0 starts this node's ranks
        return serve_mpirun(rank, nodes, rsh, log_dir, run_dir, out)
    say(out, f"node {rank} of {nodes} on {os.uname().nodename}: starting "
        f"{len(node['processes'])} process(es)")
    agent, events = start_agent(node_plan, workdir, os.path.join(log_dir, f"node-{rank}.log"))
    signal.signal(signal.SIGTERM, lambda *_: _signal(agent, signal.SIGTERM))
    signal.signal(signal.SIGINT, lambda *_: _signal(agent, signal.SIGTERM))
    relay = Relay(log_dir, out)
    relay.start()
    first_failure: dict[str, Any] | None = None
    for line in events:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "exited" and event.get("returncode") and not first_failure:
            first_failure = event
            relay.poll()  # its last lines before the news of its exit
            who = (f"rank {event['rank']}" if event.get("rank") is not None
                   else f"the launcher of node {rank}")
            say(out, f"{who} exited with code {event['returncode']} at {time.time():.3f}")
            _signal(agent, signal.SIGTERM)  # one rank down stops the node, as srun does
    code = _wait(agent)
    if first_failure is not None:  # the failing rank's own code, not the stop's
        failed = int(first_failure["returncode"])
        code = failed if failed > 0 else 128 - failed
    return finish_node(rank, code, relay, run_dir, out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with open(args[0], encoding="utf-8") as handle:
        plan = json.load(handle)
    rank = node_rank(plan, dict(os.environ))
    run_dir, log_dir, workdir = plan["run_dir"], plan["log_dir"], plan["workdir"]
    here = os.path.dirname(os.path.abspath(args[0]))
    package = os.path.join(here, "code.tar.gz")
    os.makedirs(run_dir, exist_ok=True)
    if plan.get("package_url"):
        package = fetch(plan["package_url"], os.path.join(run_dir, "code.tar.gz"))
    prepare(run_dir, log_dir, workdir, package if plan.get("package") else None,
            os.path.join(here, "function.pkl"))
    return run_node(rank, len(plan["nodes"]), plan["nodes"][rank], run_dir=run_dir,
                    log_dir=log_dir, workdir=workdir, grace=plan.get("grace", 10),
                    rsh=plan.get("rsh"))


if __name__ == "__main__":
    sys.exit(main())
