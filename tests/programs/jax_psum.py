"""jax.distributed.initialize() with no arguments (the launcher's variables), then a psum
and an allgather across processes; each process writes what it saw to OUT_DIR/rank-R.json.
``--fail-rank R`` makes process R exit 3 after initializing, while the others wait for it in
the allgather."""

import argparse
import json
import os
import socket

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils

parser = argparse.ArgumentParser()
parser.add_argument("out_dir")
parser.add_argument("--fail-rank", type=int, default=-1)
args = parser.parse_args()

jax.distributed.initialize()
index = jax.process_index()
if index == args.fail_rank:
    print(f"process {index} failing on purpose", flush=True)
    raise SystemExit(3)

mine = jnp.array([float(index + 1)])
gathered = multihost_utils.process_allgather(mine)
# psum over one device per process: a collective across the processes
mesh = jax.make_mesh((jax.device_count(),), ("p",), devices=jax.devices())
spec = jax.sharding.PartitionSpec("p")
sharding = jax.sharding.NamedSharding(mesh, spec)
local = [jax.device_put(jnp.full((1,), float(index + 1)), d) for d in jax.local_devices()]
global_x = jax.make_array_from_single_device_arrays((jax.device_count(),), sharding, local)
total = jax.jit(jax.shard_map(lambda v: jax.lax.psum(v, "p"), mesh=mesh, in_specs=spec,
                              out_specs=spec))(global_x)

record = {
    "rank": int(os.environ["RANK"]),
    "process_index": index,
    "process_count": jax.process_count(),
    "devices": jax.device_count(),
    "local_devices": jax.local_device_count(),
    "allgather": gathered.ravel().tolist(),
    "psum": [float(s.data[0]) for s in total.addressable_shards],
    "env": {k: os.environ.get(k) for k in (
        "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
        "JAX_LOCAL_PROCESS_ID", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")},
    "host": socket.gethostname(),
}
with open(os.path.join(args.out_dir, f"rank-{record['rank']}.json"), "w") as handle:
    json.dump(record, handle)
print(f"process {index} of {jax.process_count()} psum {record['psum']}", flush=True)
