"""Rank 1 holds 500 MB for a while; rank 0 keeps one core busy. For the resource sampler."""

import os
import time

rank = int(os.environ["RANK"])
block = bytearray(500 * 2**20) if rank == 1 else b""
for i in range(0, len(block), 4096):
    block[i] = 1  # touch every page: resident, not only reserved
end = time.time() + 2.5
while time.time() < end:
    if rank == 0:
        sum(range(20000))
    else:
        time.sleep(0.05)
print(f"rank {rank} held {len(block) >> 20} MB")
