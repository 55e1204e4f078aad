"""Start-up of a 2-node Ray cluster: through corral (``--launcher ray`` on 2 emulated nodes)
against ``ray start`` by hand (a head, then a worker node, with the same flags, ports and
token authentication), side by side and alternated, on this machine.

Measured: from the first command until a driver connected to the cluster sees both nodes
("up"), and until every process has ended ("total"). Run: ``python bench/ray_startup.py
[--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from corral.environment import read_environment
from corral.ports import PORT_BLOCK, pick_port
from corral.runtime.ray_node import reachable, start_command

DRIVER = """
import json, time, ray
ray.init()
while len([n for n in ray.nodes() if n["Alive"]]) < 2:
    time.sleep(0.05)
print("READY " + json.dumps(time.time()), flush=True)
"""


def ready_time(output: str) -> float:
    line = next(x for x in output.splitlines() if "READY " in x)
    return float(line.split("READY ", 1)[1])


def through_corral(work: Path) -> tuple[float, float]:
    env = {**os.environ, "CORRAL_HOME": str(work / "home")}
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "corral.cli", "run", "--nodes", "2",
                           "--launcher", "ray", "--cpus", "1", str(work / "driver.py")],
                          capture_output=True, text=True, env=env, timeout=300)
    end = time.time()
    if done.returncode:
        raise SystemExit(f"corral run failed:\n{done.stdout}\n{done.stderr}")
    return ready_time(done.stdout) - start, end - start


def by_hand(work: Path) -> tuple[float, float]:
    port = pick_port(span=PORT_BLOCK)
    temp = tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp")
    token = work / "token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_USAGE_STATS_ENABLED": "0"}
    common = {"CORRAL_HOSTS": "127.0.0.1,127.0.0.1", "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(port), "CORRAL_NUM_NODES": "2"}
    os.environ["CORRAL_RAY_NUM_CPUS"] = "1"
    procs = []
    start = time.time()
    try:
        head = start_command(read_environment({**common, "NODE_RANK": "0"}), temp)
        procs.append(subprocess.Popen(head, env=env, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while not reachable("127.0.0.1", port):
            time.sleep(0.05)
        worker = start_command(read_environment({**common, "NODE_RANK": "1"}), temp)
        procs.append(subprocess.Popen(worker, env=env, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        driver = subprocess.run([sys.executable, str(work / "driver.py")], capture_output=True,
                                text=True, timeout=300,
                                env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"})
        up = ready_time(driver.stdout) - start
    finally:
        for proc in reversed(procs):  # as corral does: the head first, then the worker
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=3)
                    break
                except subprocess.TimeoutExpired:
                    continue
        del os.environ["CORRAL_RAY_NUM_CPUS"]
    return up, time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"by hand": [], "corral": []}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "driver.py").write_text(DRIVER)
        for round_ in range(args.rounds):
            for name, measure in (("by hand", by_hand), ("corral", through_corral)):
                results[name].append(measure(work))
                up, total = results[name][-1]
                print(f"round {round_ + 1}: {name:8s} up {up:5.2f}s total {total:5.2f}s",
                      flush=True)
    base_up = statistics.median(u for u, _ in results["by hand"])
    base_total = statistics.median(t for _, t in results["by hand"])
    print(f"\n2-node Ray cluster, {args.rounds} rounds, {os.cpu_count()} CPUs")
    print("| how | median up s | vs by hand | median total s | vs by hand |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        up = statistics.median(u for u, _ in rows)
        total = statistics.median(t for _, t in rows)
        print(f"| {name} | {up:.2f} | {up / base_up:.2f}x | {total:.2f} | "
              f"{total / base_total:.2f}x |")
    print(json.dumps({k: [list(r) for r in v] for k, v in results.items()}))


if __name__ == "__main__":
    main()
