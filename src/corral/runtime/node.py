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

A forked rank behaves as ``python script.py`` would: a fresh ``__main__``, the same
``sys.argv``, ``sys.path[0]``, standard streams and signal dispositions; and once the
user's code has finished the child unwinds to :func:`main` and lets the interpreter shut
down as after any script (non-daemon threads joined, atexit handlers run, streams flushed,
``sys.exit``'s argument as the exit status).

Events go to the supervisor as JSON lines on the agent's original stdout; the agent's own
messages go to stderr (the node log). The agent is a child subreaper. When it is stopped
(SIGTERM), and again once its own children have exited, it signals every descendant
process, found through /proc rather than by process group (torchrun's workers and
anything started with ``setsid`` live in sessions of their own), so no rank outlives it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from types import ModuleType
from typing import Any, NoReturn

from corral.runtime import procs

# How long the agent keeps sending SIGKILL to descendants that are not gone yet (a
# process in uninterruptible sleep dies only when its I/O returns).
KILL_TIMEOUT = 5.0


class _Stop(Exception):
    """Raised by the agent's SIGTERM/SIGINT handler, once, to leave start() or wait()."""


class _RankDone(BaseException):
    """Raised in a forked rank once the user's code has finished.

    It unwinds the agent's frames up to :func:`main`, so that the rank exits the way the
    interpreter exits after a script: ``exit_value`` is what ``sys.exit`` was given (None:
    0; an int: that code; anything else is printed to stderr and gives 1), then the usual
    shutdown joins non-daemon threads, runs atexit handlers and flushes the streams.
    """

    def __init__(self, exit_value: object, interrupted: bool = False) -> None:
        super().__init__(exit_value)
        self.exit_value = exit_value
        self.interrupted = interrupted  # an unhandled KeyboardInterrupt: die by SIGINT

    def exit(self) -> NoReturn:
        """End the rank as python ends after a script, up to the interpreter's own teardown.

        The message of ``sys.exit("msg")``, then non-daemon threads joined, atexit
        handlers, the streams flushed (exit 120 if that fails), as python does; then
        ``os._exit``, as multiprocessing's forked children do: the modules the agent
        preloaded (torch) were set up in the agent, and their C++ static destructors can
        abort a forked child at exit ("terminate called without an active exception").
        """
        if self.interrupted:
            _exit_by_sigint()
        value, code = self.exit_value, 0
        if isinstance(value, int) and not isinstance(value, bool):
            code = value
        elif value is not None:
            try:
                sys.stderr.write(f"{value}\n")
            except (OSError, ValueError, AttributeError):
                pass
            code = 1
        _shutdown_like_python()
        if not _flush_stdio():
            code = 120
        os._exit(code & 0xFF)


class NodeAgent:
    def __init__(self, plan: dict[str, Any], events_fd: int) -> None:
        self.plan = plan
        self.events = os.fdopen(events_fd, "w", buffering=1, encoding="utf-8")
        self.children: dict[int, dict[str, Any]] = {}  # pid -> process entry
        self.grace = float(plan.get("grace", 1.0))
        self.base_env = dict(os.environ)  # what the ranks inherit, before our own changes
        self.user: dict[str, Any] | None = plan.get("user")  # a shared queue: drop to it
        if self.user is not None:
            self.base_env = dict(plan.get("user_env") or {})
        self.function: Any = None  # a function job's (fn, args, kwargs), loaded before forking
        self.stopping = False  # set once a stop was asked for or the ranks have all ended

    def child_ranks(self) -> dict[int, int | None]:
        """pid -> rank of this agent's own children (read by the sampler's thread)."""
        return {pid: entry.get("rank") for pid, entry in dict(self.children).items()}

    def on_stop_signal(self, signum: int, frame: object) -> None:
        """SIGTERM/SIGINT: leave start() or wait() for stop(); later signals change nothing."""
        if not self.stopping:
            self.stopping = True
            raise _Stop()

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
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        if self.user is not None:  # from here on the rank is its user, never root again
            user = self.user
            os.fchown(fd, int(user["uid"]), int(user["gid"]))
            os.setgroups([int(g) for g in user.get("groups", [])])
            os.setgid(int(user["gid"]))
            os.setuid(int(user["uid"]))
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
            try:
                self._child_setup(entry)
                env = {**self.base_env, **entry["env"]}
                done = _run_in_child(self.plan["target"], env, self.function)
            except BaseException as exc:  # corral's own failure, not the user's code
                print(f"corral: cannot run rank {entry.get('rank')}: {exc!r}", file=sys.stderr)
                _flush_stdio()
                os._exit(1)
            raise done  # to main(), which exits as the interpreter does after a script
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
        """SIGTERM every descendant, SIGKILL what is left after the grace period, reap.

        Descendants are found through /proc, whatever their process group or session:
        torchrun starts its workers with setsid, and a rank may do the same. Orphans are
        re-parented to this agent (a child subreaper), so they are found as well.
        """
        me = os.getpid()
        signalled: set[int] = set()
        deadline = time.monotonic() + self.grace
        while True:
            left = procs.descendants(me)
            for pid in left:
                if pid not in signalled:  # also those started since the last look
                    signalled.add(pid)
                    procs.kill_quietly(pid, signal.SIGTERM)
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
            self._reap_exited()
        deadline = time.monotonic() + KILL_TIMEOUT
        while left and time.monotonic() < deadline:
            for pid in left:
                procs.kill_quietly(pid, signal.SIGKILL)
            time.sleep(0.01)
            self._reap_exited()
            left = procs.descendants(me)
        if left:
            print(f"corral: processes {left} outlived SIGKILL for {KILL_TIMEOUT:g}s",
                  file=sys.stderr)
        self._reap_exited()

    def _reap_exited(self) -> None:
        """Reap (and report) every child that has exited, without waiting."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._exited(pid, status)

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


def _run_in_child(target: dict[str, Any], env: dict[str, str], function: Any) -> _RankDone:
    """Run the user's code in a forked rank the way ``python`` runs it; say how it ended."""
    _become_rank_process(env)
    try:
        if target["kind"] == "script":
            _run_script(target["path"], target["args"])
        elif target["kind"] == "module":
            _run_module(target["module"], target["args"])
        else:
            from corral.runtime import call

            return _RankDone(call.run_loaded(function, target["payload"]))
    except SystemExit as exc:
        return _RankDone(exc.code)
    except BaseException as exc:
        _print_unhandled(exc)
        return _RankDone(1, interrupted=isinstance(exc, KeyboardInterrupt))
    return _RankDone(0)


def _become_rank_process(env: dict[str, str]) -> None:
    """What a fresh ``python`` would have: the rank's environment, standard streams set up
    as python sets them up (unbuffered under PYTHONUNBUFFERED, which corral sets), python's
    signal dispositions, and torch's thread count."""
    os.environ.clear()
    os.environ.update(env)
    _fresh_stdio(unbuffered=bool(env.get("PYTHONUNBUFFERED")))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_IGN)
    torch = sys.modules.get("torch")
    threads = env.get("OMP_NUM_THREADS")
    if torch is not None and threads and threads.isdigit():
        torch.set_num_threads(int(threads))


def _fresh_stdio(unbuffered: bool) -> None:
    """New sys.stdout and sys.stderr on fds 1 and 2 (the rank's log), made as python makes
    them; the agent's were flushed before the fork."""
    import io

    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        encoding = getattr(old, "encoding", None) or "utf-8"
        errors = getattr(old, "errors", None) or ("backslashreplace" if fd == 2 else "strict")
        raw = io.FileIO(fd, "w", closefd=False)
        stream = io.TextIOWrapper(
            raw if unbuffered else io.BufferedWriter(raw),
            encoding=encoding, errors=errors, newline="\n",
            line_buffering=not unbuffered and (fd == 2 or os.isatty(fd)),
            write_through=unbuffered,
        )
        stream.mode = "w"  # type: ignore[misc]
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _fresh_main() -> ModuleType:
    """A new, empty ``__main__`` module (the agent's own stays with the agent's functions)."""
    import builtins

    main = ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    return main


def _set_path0(entry: str) -> None:
    """sys.path[0] as python sets it for the program, in place of the agent's own."""
    if not getattr(sys.flags, "safe_path", False):  # the agent's ``-m`` put its cwd first
        del sys.path[0]
    if not os.environ.get("PYTHONSAFEPATH"):
        sys.path.insert(0, entry)


def _run_script(path: str, args: list[str]) -> None:
    """``python PATH ARGS...``; a directory or zip file runs its ``__main__.py``."""
    sys.argv = [path, *args]
    if _path_importer(path) is not None:
        _set_path0(path)
        _run_main_module("__main__", alter_argv=False)
        return
    filename = os.path.abspath(path)
    try:
        with open(filename, "rb") as handle:
            source = handle.read()
    except OSError as exc:
        print(f"{sys.executable}: can't open file {filename!r}: [Errno {exc.errno}] "
              f"{exc.strerror}", file=sys.stderr)
        raise SystemExit(2) from None
    _set_path0(os.path.dirname(os.path.realpath(path)))
    from importlib.machinery import SourceFileLoader

    code = compile(source, filename, "exec", dont_inherit=True)
    namespace = _fresh_main().__dict__
    namespace.update(__file__=filename, __cached__=None,
                     __loader__=SourceFileLoader("__main__", filename))
    # Once a script's code has run, python flushes stderr and stdout (before printing an
    # exception) and removes __file__ again, unless sys.exit ended it.
    try:
        exec(code, namespace)
    except SystemExit:
        _flush_stdio()
        raise
    except BaseException:
        _flush_stdio()
        _forget_file(namespace)
        raise
    _flush_stdio()
    _forget_file(namespace)


def _forget_file(namespace: dict[str, Any]) -> None:
    namespace.pop("__file__", None)
    namespace.pop("__cached__", None)


def _run_module(module: str, args: list[str]) -> None:
    """``python -m MODULE ARGS...``: the working directory first on sys.path."""
    sys.argv = ["-m", *args]
    _set_path0(os.getcwd())
    _run_main_module(module, alter_argv=True)


def _run_main_module(module: str, alter_argv: bool) -> None:
    """Run a module as ``__main__`` with runpy's own entry point for ``python -m``."""
    import runpy

    _fresh_main()
    runpy._run_module_as_main(module, alter_argv)  # type: ignore[attr-defined]


def _path_importer(path: str) -> object | None:
    """The importer python would run PATH with (a directory, a zip file); None for a file."""
    for hook in sys.path_hooks:
        try:
            return hook(path)
        except ImportError:
            continue
    return None


def _print_unhandled(exc: BaseException) -> None:
    """Print an uncaught exception as python does, without the agent's own frames."""
    own = _print_unhandled.__code__.co_filename
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == own:
        tb = tb.tb_next
    exc.__traceback__ = tb
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
    try:
        sys.excepthook(type(exc), exc, tb)
    except BaseException as hook_failed:
        print("Error in sys.excepthook:", file=sys.stderr)
        sys.__excepthook__(type(hook_failed), hook_failed, hook_failed.__traceback__)
        print("\nOriginal exception was:", file=sys.stderr)
        sys.__excepthook__(type(exc), exc, tb)


def _flush_stdio() -> bool:
    """Flush stdout and stderr; False if a flush failed (python then exits 120)."""
    ok = True
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            ok = False
        except AttributeError:  # replaced by something without flush()
            pass
    return ok


def _shutdown_like_python() -> None:
    """What the interpreter does first at exit: join non-daemon threads, run atexit."""
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)  # what python calls at exit
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()


def _exit_by_sigint() -> NoReturn:
    """After an unhandled KeyboardInterrupt python shuts down, then dies by SIGINT."""
    try:
        _shutdown_like_python()
    finally:
        _flush_stdio()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        os._exit(128 + signal.SIGINT)


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
    signal.signal(signal.SIGTERM, agent.on_stop_signal)
    signal.signal(signal.SIGINT, agent.on_stop_signal)
    sampler = None
    try:
        agent.start()
        if plan.get("log_dir"):  # the ranks' CPU, memory and GPU use (runtime/sampler.py)
            from corral.runtime.sampler import start_sampler

            sampler = start_sampler(plan["node_rank"], os.path.dirname(plan["log_dir"]),
                                    agent.child_ranks)
        code = agent.wait()
        agent.stopping = True  # from here on a SIGTERM changes nothing: we stop anyway
        left = procs.descendants(os.getpid())
        if left:
            print(f"corral: the ranks have ended; stopping what they left running: {left}",
                  file=sys.stderr)
    except _Stop:
        code = 128 + signal.SIGTERM
    except _RankDone as done:  # in a forked rank, once the user's code has finished
        done.exit()
    if sampler is not None:
        sampler.stop()
    agent.stop()
    agent.emit(event="done", returncode=code)
    return code


if __name__ == "__main__":
    sys.exit(main())
