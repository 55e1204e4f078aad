"""AWS Batch submission: ``corral run --backend aws-batch`` against TorchX's AWS Batch scheduler.

Both cases submit the same multi-node parallel job, 4 nodes x 8 torchrun ranks, image
``corral-bench:latest``, to one job queue of moto's server on 127.0.0.1 (an EMULATOR of AWS:
it answers the same API calls, on loopback, with no network latency; the numbers say what
each tool costs on the submitting machine and how many calls it makes, not how long AWS
takes):

- baseline: TorchX 0.7.0 (``bench/.venv-peers``), ``bench/workloads/torchx_aws_batch_submit.py``:
  ``get_runner().run(dist.ddp(j="4x8", ...), scheduler="aws_batch", cfg={"queue": ...})``.
  TorchX registers a job definition (a new revision) on every submission, then submits.
- corral: ``corral run --backend aws-batch --detach --nodes 4 --procs-per-node 8 --launcher
  torchrun ... train.py``, the whole CLI process: imports, render, the checks against
  botocore's model, the job store; it registers the definition of these contents once and
  then only looks it up (DescribeJobDefinitions), then submits.

What is timed: each submitting subprocess's wall time (t0 just before it starts, t1 when it
has exited 0 and printed the job). After a warm-up round, every round runs both, in turn
(alternating which goes first); the table gives medians and the ratio to TorchX's median, and
the job definitions (revisions) each left in the emulator after all rounds.

The peers' virtual environment needs boto3: if it lacks it, the benchmark installs the same
boto3 version as this interpreter's into it (``pip install boto3==X``), once.

    .venv/bin/python bench/aws_batch_submit.py              # 1 warm-up + 7 rounds
    .venv/bin/python bench/aws_batch_submit.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
from harness import BENCH_DIR

PEERS_PYTHON = BENCH_DIR / ".venv-peers" / "bin" / "python"
TORCHX_SCRIPT = BENCH_DIR / "workloads" / "torchx_aws_batch_submit.py"
QUEUE = "bench-queue"
IMAGE = "corral-bench:latest"


def ensure_peer_boto3() -> None:
    if not PEERS_PYTHON.exists():
        sys.exit(f"no peers' environment at {PEERS_PYTHON.parent.parent}: run "
                 "bench/launch_overhead.py once (it creates it)")
    found = subprocess.run([str(PEERS_PYTHON), "-c", "import boto3"], capture_output=True)
    if found.returncode != 0:
        import boto3

        print(f"installing boto3=={boto3.__version__} into the peers' environment",
              file=sys.stderr)
        subprocess.run([str(PEERS_PYTHON), "-m", "pip", "install", "--quiet",
                        f"boto3=={boto3.__version__}"], check=True)


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0 or not done.stdout.strip():
        sys.exit(f"{argv[0]} ... failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    ensure_peer_boto3()
    moto = harness.infra_module("moto_server")
    scratch = Path(tempfile.mkdtemp(prefix="corral-bench-batch-"))
    server = moto.MotoServer(scratch)
    try:
        os.environ.update(moto.FAKE_CREDENTIALS)
        moto.batch_queue(server, QUEUE)
        work = scratch / "work"
        work.mkdir()
        (work / "train.py").write_text("print('train')\n")
        env = {**os.environ, "AWS_ENDPOINT_URL": server.url,
               "CORRAL_HOME": str(scratch / "corral-home")}
        env.pop("PYTHONPATH", None)
        corral = [str(harness.default_corral()), "run", "--backend", "aws-batch", "--detach",
                  "-o", "region=us-east-1", "-o", f"endpoint_url={server.url}",
                  "--queue", QUEUE, "--image", IMAGE, "--nodes", "4", "--procs-per-node", "8",
                  "--launcher", "torchrun", "train.py"]
        torchx = [str(PEERS_PYTHON), str(TORCHX_SCRIPT), QUEUE]
        cases = {"TorchX 0.7.0 `runner.run(dist.ddp(j=\"4x8\"), scheduler=\"aws_batch\")` "
                 "(baseline)": torchx,
                 "`corral run --backend aws-batch --detach --nodes 4 --procs-per-node 8`":
                 corral}
        times: dict[str, list[float]] = {name: [] for name in cases}
        for argv in cases.values():  # warm-up: caches, the first registration
            timed(argv, env, work)
        for round_no in range(args.rounds):
            order = list(cases) if round_no % 2 == 0 else list(reversed(cases))
            for name in order:
                times[name].append(timed(cases[name], env, work))
        import boto3

        batch = boto3.client("batch", endpoint_url=server.url, region_name="us-east-1")
        definitions = batch.describe_job_definitions()["jobDefinitions"]
        by_tool = {"torchx": sum(1 for d in definitions if not
                                 d["jobDefinitionName"].startswith("corral-")),
                   "corral": sum(1 for d in definitions if
                                 d["jobDefinitionName"].startswith("corral-"))}
    finally:
        server.stop()
    base = statistics.median(next(iter(times.values())))
    print(f"\n{args.rounds} rounds after a warm-up, {args.rounds + 1} submissions each, "
          "moto's server on 127.0.0.1 (an emulator)\n")
    print("| case | median submit s | vs baseline | range s | job definitions registered |")
    print("|---|---|---|---|---|")
    for (name, samples), tool in zip(times.items(), ("torchx", "corral"), strict=True):
        median = statistics.median(samples)
        print(f"| {name} | {median:.3f} | {median / base:.2f}\N{MULTIPLICATION SIGN} | "
              f"{min(samples):.3f}\N{EN DASH}{max(samples):.3f} | {by_tool[tool]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
