"""The node agent: starts the processes of one (emulated) node and reports their exits.

Run as ``python -m corral.runtime.node PLAN.json``. It imports only the standard library
(plus whatever the plan asks it to preload), so it starts in a few tens of milliseconds.

Two ways to start ranks:

* ``exec``: fork + exec each process of the plan (a rank, or a launcher agent such as
  torchrun or mpirun).
* ``fork``: import the heavy modules the ranks need (``torch``) once, then fork one child
  per rank that runs the script, module or function directly. This pays ``import torch``
  once per node instead of once per rank (plus once more for torchrun's own agent). It is
  used only while the process is still single-threaded after the preload and no CUDA
  context exists; otherwise the agent falls back to ``exec`` and says why in its log.

Events go to the supervisor as JSON lines on the agent's original stdout; the agent's own
messages go to stderr (the node log). The agent is a child subreaper and kills its whole
tree on SIGTERM, so no rank outlives it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from corral.runtime import procs


class _Stop(Exception):
    pass


def _on_term(signum: int, frame: object) -> None:
    raise _Stop()


class NodeAgent:
    def __init__(self, plan: dict[str, Any], events_fd: int) -> None:
        self.plan = plan
        self.events = os.fdopen(events_fd, "w", buffering=1, encoding="utf-8")
        self.children: dict[int, dict[str, Any]] = {}  # pid -> process entry
        self.grace = float(plan.get("grace", 1.0))
        self.base_env = dict(os.environ)  # what the ranks inherit, before our own changes
        self.function: Any = None  # a function job's (fn, args, kwargs), loaded before forking

    def emit(self, **event: Any) -> None:
        event.setdefault("node", self.plan["node_rank"])
        event.setdefault("time", time.time())
        try:
            self.events.write(json.dumps(event) + "\n")
        except (BrokenPipeError, ValueError):
            pass

    # -- starting -------------------------------------------------------------------------

    def start(self) -> None:
        mode = self.plan["mode"]
        if mode == "fork":
            reason = self._preload()
            if reason is None:
                for entry in self.plan["processes"]:
                    self._fork_rank(entry)
                return
            self.emit(event="fallback", reason=reason)
            print(f"corral: starting ranks with exec instead of fork: {reason}", file=sys.stderr)
        for entry in self.plan["processes"]:
            self._spawn(entry)

    def _preload(self) -> str | None:
        """Import what the ranks need; None if forking is still safe afterwards."""
        started = time.monotonic()
        target = self.plan["target"]
        # numpy's OpenBLAS starts a thread pool at import unless told not to; a pool
        # would make the fork unsafe. Forked ranks keep a single BLAS thread.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        for name in self.plan.get("preload", []):
            try:
                __import__(name)
            except Exception as exc:  # the rank will hit the same error and report it
                return f"preloading {name!r} failed: {exc!r}"
        if target["kind"] == "function":
            from corral.runtime import call

            try:
                self.function = call.load_payload(target["payload"])
            except Exception as exc:
                return f"loading the function failed: {exc!r}"
        threads = _thread_count()
        if threads > 1:
            return f"the process has {threads} threads after preloading; forking is unsafe"
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            return "CUDA was initialized while preloading; a forked child cannot use it"
        self.emit(event="preloaded", modules=self.plan.get("preload", []),
                  seconds=round(time.monotonic() - started, 3))
        return None

    def _child_setup(self, entry: dict[str, Any]) -> None:
        """In a fresh child: output to its log, default signals, die with the agent."""
        self.events.close()
        procs.die_with_parent(signal.SIGKILL)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        log = os.path.join(self.plan["log_dir"], entry["log"])
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(null)

    def _spawn(self, entry: dict[str, Any]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                self._child_setup(entry)
                os.execvpe(entry["argv"][0], entry["argv"], {**self.base_env, **entry["env"]})
            except BaseException as exc:
                print(f"corral: cannot start {entry['argv'][0]!r}: {exc}", file=sys.stderr)
                sys.stderr.flush()
            os._exit(127)
        self._started(pid, entry)

    def _fork_rank(self, entry: dict[str, Any]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self._child_setup(entry)
                env = {**self.base_env, **entry["env"]}
                code = _run_in_child(self.plan["target"], env, self.function)
            finally:
                os._exit(code)
        self._started(pid, entry)

    def _started(self, pid: int, entry: dict[str, Any]) -> None:
        self.children[pid] = entry
        self.emit(event="started", pid=pid, rank=entry.get("rank"), log=entry["log"])

    # -- waiting and stopping --------------------------------------------------------------

    def wait(self) -> int:
        first_failure = 0
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            code = self._exited(pid, status)
            if code is None:
                continue  # an orphaned grandchild re-parented to us (subreaper)
            if code != 0 and first_failure == 0:
                first_failure = code if code > 0 else 128 - code
        return first_failure

    def stop(self) -> None:
        """SIGTERM every descendant, SIGKILL what is left after the grace period."""
        import psutil

        me = psutil.Process()
        for child in me.children(recursive=True):
            procs.kill_quietly(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and self._reap_any():
            time.sleep(0.01)
        for child in me.children(recursive=True):
            procs.kill_quietly(child.pid, signal.SIGKILL)
        while self._reap_any(block=True):
            pass

    def _reap_any(self, block: bool = False) -> bool:
        """Reap exited children; False once none are left."""
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return False
        if pid:
            self._exited(pid, status)
        return True

    def _exited(self, pid: int, status: int) -> int | None:
        """Report one of our processes' exit; None for a re-parented stranger."""
        entry = self.children.pop(pid, None)
        if entry is None:
            return None
        code = procs.returncode_from_status(status)
        self.emit(event="exited", pid=pid, rank=entry.get("rank"), returncode=code)
        return code


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def _run_in_child(target: dict[str, Any], env: dict[str, str], function: Any) -> int:
    """Run the user's code in a forked rank the way ``python`` would; return its exit code."""
    import atexit
    import runpy
    import traceback

    os.environ.clear()
    os.environ.update(env)
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True, write_through=True)
    torch = sys.modules.get("torch")
    threads = env.get("OMP_NUM_THREADS")
    if torch is not None and threads and threads.isdigit():
        torch.set_num_threads(int(threads))
    code = 0
    try:
        if target["kind"] == "script":
            path = target["path"]
            sys.argv = [path, *target["args"]]
            sys.path[0] = os.path.dirname(os.path.abspath(path))
            runpy.run_path(path, run_name="__main__")
        elif target["kind"] == "module":
            sys.argv = [target["module"], *target["args"]]
            sys.path[0] = os.getcwd()
            runpy.run_module(target["module"], run_name="__main__", alter_sys=True)
        else:
            from corral.runtime import call

            code = call.run_loaded(function, target["payload"])
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with open(args[0], encoding="utf-8") as handle:
        plan = json.load(handle)
    parent = os.getppid()
    procs.die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:  # the supervisor died before we asked
        return 1
    procs.become_subreaper()
    events_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints from preloaded modules go to the node log
    agent = NodeAgent(plan, events_fd)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    try:
        agent.start()
        code = agent.wait()
    except _Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        agent.stop()
        code = 128 + signal.SIGTERM
    agent.emit(event="done", returncode=code)
    return code


if __name__ == "__main__":
    sys.exit(main())
