"""The no-op DDP workload: join a gloo group, all-reduce 4 floats, print the rank, leave.

Run it under any launcher that sets the torchrun variables (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``): ``init_process_group`` reads them through ``env://``.
It exits non-zero if the all-reduce gives a wrong sum, so an exit code of 0 means the
ranks really met.
"""

import sys

import torch
import torch.distributed as dist


def main() -> int:
    dist.init_process_group("gloo")
    tensor = torch.ones(4)
    dist.all_reduce(tensor)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    print(rank, flush=True)
    dist.destroy_process_group()
    return 0 if bool(torch.all(tensor == world_size)) else 1


if __name__ == "__main__":
    sys.exit(main())
