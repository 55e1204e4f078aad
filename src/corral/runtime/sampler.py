"""Resource profiles: the node agent samples every process of its ranks, per rank.

Every ``CORRAL_PROFILE_SECONDS`` (default 1; 0 turns it off) a thread of the node agent reads
``/proc`` for each process below the agent (a rank, a launcher's agent and its workers,
whatever they started), finds its rank from its ``RANK`` variable (none: the node's own,
such as torchrun's agent) and appends one line per rank to
``<run dir>/profile/node-<N>.jsonl``: ``{"t", "rank", "cpu" (% of one core), "rss" (bytes),
"procs"}``, plus ``"gpu_mem"`` (bytes) and ``"gpu_util"`` (% of the GPUs the rank uses) when
NVML sees a GPU. The first line says which GPUs were found, or why none.

On Slurm, where no corral agent runs on the nodes, ``python -m corral.runtime.sampler``
runs as a step of its own beside the ranks, one task per node, and samples the processes of
this job on its node (found by ``CORRAL_JOB_ID`` and ``SLURM_NODEID`` in their environment)
until the job script stops it.

Only the standard library is imported (NVML through ``pynvml`` when it is installed).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from corral.runtime import procs

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
NO_RANK = -1  # the node's own processes (a launcher's agent)


def interval_from_env() -> float:
    try:
        return max(0.0, float(os.environ.get("CORRAL_PROFILE_SECONDS", "1")))
    except ValueError:
        return 1.0


def _cpu_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return None


def _rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def _environ(pid: int) -> list[bytes]:
    """The process's environment as it started (``NAME=value`` items); [] once it is gone."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return handle.read().split(b"\0")
    except OSError:
        return []


def _rank_of(pid: int) -> int:
    for item in _environ(pid):
        if item.startswith(b"RANK="):
            try:
                return int(item[5:])
            except ValueError:
                break
    return NO_RANK


class _Gpus:
    """Per-process GPU memory and per-device utilization through NVML, when there is one."""

    def __init__(self) -> None:
        self.nvml: Any = None
        self.handles: list[Any] = []
        self.note = ""
        try:
            import pynvml  # type: ignore[import-not-found]

            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                            for i in range(pynvml.nvmlDeviceGetCount())]
            self.nvml = pynvml
            self.note = f"{len(self.handles)} GPU(s) seen through NVML"
        except ImportError:
            self.note = ("no GPU sampling: nvidia-ml-py is not installed"
                         if os.path.exists("/dev/nvidia0") else "no GPU on this node")
        except Exception as exc:  # no driver, no device
            self.note = f"no GPU: {exc}"

    def sample(self) -> tuple[dict[int, int], dict[int, float]]:
        """(pid -> GPU bytes, pid -> utilization % of the devices it uses)."""
        memory: dict[int, int] = {}
        util: dict[int, float] = {}
        for handle in self.handles:
            try:
                busy = float(self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                for proc in self.nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    memory[proc.pid] = memory.get(proc.pid, 0) + int(proc.usedGpuMemory or 0)
                    util[proc.pid] = max(util.get(proc.pid, 0.0), busy)
            except Exception:
                continue
        return memory, util


class Sampler(threading.Thread):
    """``known()`` gives the ranks of the agent's own children (a forked rank's environment
    in /proc is the agent's, without its RANK); other processes are found by RANK."""

    def __init__(self, find: Callable[[], list[int]], node: int, path: str, interval: float,
                 known: Callable[[], Mapping[int, int | None]]) -> None:
        super().__init__(name="corral-sampler", daemon=True)
        self.find, self.node, self.path, self.interval = find, node, path, interval
        self.known = known
        self.done = threading.Event()
        self.last: dict[int, tuple[float, int]] = {}  # pid -> (time, ticks)
        self.ranks: dict[int, int] = {}  # pid -> rank, read once per process

    def run(self) -> None:
        # Nothing while the ranks start (on a small machine that is the critical path): the
        # first look, NVML included, comes one interval later.
        if self.done.wait(self.interval):
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        gpus = _Gpus()
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"t": time.time(), "node": self.node, "gpus": gpus.note,
                                  "interval": self.interval}) + "\n")
            while True:
                for row in self.sample(gpus):
                    out.write(json.dumps(row) + "\n")
                out.flush()
                if self.done.wait(self.interval):
                    return

    def sample(self, gpus: _Gpus) -> list[dict[str, Any]]:
        now = time.time()
        pids = self.find()
        known = self.known()
        gpu_mem, gpu_util = gpus.sample() if gpus.nvml is not None else ({}, {})
        rows: dict[int, dict[str, Any]] = {}
        for pid in pids:
            ticks, rss = _cpu_ticks(pid), _rss(pid)
            if ticks is None or not rss:  # gone since the listing (or a zombie by now)
                continue
            if pid not in self.ranks:
                mine = known.get(pid)
                self.ranks[pid] = _rank_of(pid) if mine is None else mine
            rank = self.ranks[pid]
            row = rows.setdefault(rank, {"t": now, "rank": None if rank == NO_RANK else rank,
                                         "cpu": 0.0, "rss": 0, "procs": 0})
            before = self.last.get(pid)
            if before is not None and now > before[0]:
                row["cpu"] += 100.0 * (ticks - before[1]) / TICKS / (now - before[0])
            self.last[pid] = (now, ticks)
            row["rss"] += rss
            row["procs"] += 1
            if pid in gpu_mem:
                row["gpu_mem"] = row.get("gpu_mem", 0) + gpu_mem[pid]
                row["gpu_util"] = max(row.get("gpu_util", 0.0), gpu_util[pid])
        for gone in set(self.last) - set(pids):
            self.last.pop(gone, None)
            self.ranks.pop(gone, None)
        for row in rows.values():
            row["cpu"] = round(row["cpu"], 1)
        return [rows[r] for r in sorted(rows)]

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=2 * self.interval + 1)


def profile_file(run_dir: str, node: int) -> str:
    return os.path.join(run_dir, "profile", f"node-{node}.jsonl")


def start_sampler(node: int, run_dir: str,
                  known: Callable[[], Mapping[int, int | None]]) -> Sampler | None:
    """Sample this process's descendants from now on (None when turned off)."""
    interval = interval_from_env()
    if interval <= 0:
        return None
    me = os.getpid()
    sampler = Sampler(lambda: procs.descendants(me), node, profile_file(run_dir, node),
                      interval, known)
    sampler.start()
    return sampler


def _environ_has(pid: int, wanted: Mapping[bytes, bytes]) -> bool:
    items = set(_environ(pid))
    return all(key + b"=" + value in items for key, value in wanted.items())


def job_processes(job_id: str, node: str) -> list[int]:
    """This job's processes on this node, by their environment (Slurm: no agent to ask)."""
    wanted = {b"CORRAL_JOB_ID": job_id.encode(), b"SLURM_NODEID": node.encode()}
    me = os.getpid()
    return [int(n) for n in os.listdir("/proc")
            if n.isdigit() and int(n) != me and _environ_has(int(n), wanted)]


def main() -> int:
    """Sample this job's processes on this node until SIGTERM (the Slurm job script's step)."""
    import signal

    job_id, node = os.environ.get("CORRAL_JOB_ID"), os.environ.get("SLURM_NODEID")
    run_dir, interval = os.environ.get("CORRAL_RUN_DIR"), interval_from_env()
    if not (job_id and node and run_dir) or interval <= 0:
        return 0
    sampler = Sampler(lambda: job_processes(job_id, node), int(node),
                      profile_file(run_dir, int(node)), interval, dict)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    sampler.start()
    while not stopped.wait(0.5):
        pass
    sampler.stop()
    return 0


def parse_profile(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(samples, notes) of one node's profile file; a line cut short is skipped."""
    samples: list[dict[str, Any]] = []
    notes: list[str] = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "gpus" in row:
            notes.append(f"node {row.get('node')}: {row['gpus']}")
        elif "rank" in row:
            samples.append(row)
    return samples, notes


if __name__ == "__main__":
    raise SystemExit(main())
