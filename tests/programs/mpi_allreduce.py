"""mpi4py allreduce; each rank writes what it saw to OUT_DIR/rank-R.json."""

import json
import os
import sys

from mpi4py import MPI

comm = MPI.COMM_WORLD
total = comm.allreduce(comm.Get_rank() + 1, op=MPI.SUM)
record = {
    "mpi_rank": comm.Get_rank(),
    "mpi_size": comm.Get_size(),
    "sum": total,
    "env": {k: os.environ.get(k) for k in (
        "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR")},
}
with open(os.path.join(sys.argv[1], f"rank-{comm.Get_rank()}.json"), "w") as handle:
    json.dump(record, handle)
print(f"mpi rank {comm.Get_rank()} sum {total}")
