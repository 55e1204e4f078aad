"""Rank FAIL_RANK misbehaves after printing: `exit N`, `kill` (SIGKILL itself) or `hang`."""

import os
import signal
import sys
import time

rank = int(os.environ["RANK"])
mode, bad_rank = sys.argv[1], int(sys.argv[2])
print(f"rank {rank} started pid {os.getpid()}", flush=True)
if rank == bad_rank:
    time.sleep(0.3)
    print(f"rank {rank} about to {mode}", flush=True)
    if mode.startswith("exit"):
        sys.exit(int(mode[4:] or 1))
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
time.sleep(120)
