"""Each rank logs ``loss`` = rank + step / 10 and ``lr`` for 5 steps with corral.log, then
stays a second (long enough for the resource sampler to see every rank)."""

import os
import time

import corral

rank = int(os.environ["RANK"])
for step in range(5):
    corral.log(step=step, loss=rank + step / 10, lr=0.1)
corral.log(final=float(rank))  # no step
time.sleep(1)
print(f"rank {rank} logged")
