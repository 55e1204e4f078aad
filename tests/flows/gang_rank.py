"""One rank of the gang flow's training: an all_reduce; rank FAIL exits 1 if OUT/fail exists."""

import os
import sys

import torch
import torch.distributed as dist

out, fail = sys.argv[1], int(sys.argv[2])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
if rank == fail and os.path.exists(os.path.join(out, "fail")):
    print(f"rank {rank} failing on purpose", flush=True)
    sys.exit(1)
tensor = torch.full((1,), float(rank + 1))
dist.all_reduce(tensor)
# one write per line: the ranks of a node share torchrun's output pipe
sys.stdout.write(f"rank {rank}/{world} sum {tensor[0].item():g}\n")
sys.stdout.flush()
dist.destroy_process_group()
