"""all_reduce over gloo; each rank writes what it saw to OUT_DIR/rank-R.json."""

import json
import os
import socket
import sys

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
tensor = torch.full((4,), float(rank + 1))
dist.all_reduce(tensor)
record = {
    "rank": rank,
    "world": world,
    "sum": tensor.tolist(),
    "env": {k: os.environ.get(k) for k in (
        "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR",
        "MASTER_PORT", "GROUP_RANK", "OMP_NUM_THREADS", "CORRAL_JOB_ID", "TORCHELASTIC_RUN_ID")},
    "host": socket.gethostname(),
    "pid": os.getpid(),
}
# DeepSpeed's launcher adds --local_rank=N before the script's own arguments
out_dir = next(a for a in sys.argv[1:] if not a.startswith("--local_rank"))
record["argv"] = sys.argv[1:]
with open(os.path.join(out_dir, f"rank-{rank}.json"), "w") as handle:
    json.dump(record, handle)
print(f"rank {rank}/{world} sum {tensor[0].item():g}")
dist.destroy_process_group()
