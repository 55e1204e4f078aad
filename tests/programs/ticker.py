"""Prints ``rank R tick N`` every 0.3 s for up to 2 minutes (a job to watch and cancel)."""

import os
import time

rank = os.environ.get("RANK", "0")
for tick in range(400):
    print(f"rank {rank} tick {tick}", flush=True)
    time.sleep(0.3)
