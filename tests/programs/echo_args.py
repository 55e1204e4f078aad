"""Write argv and selected env of this rank to OUT_DIR/rank-R.json (OUT_DIR = argv[1])."""

import json
import os
import sys

import corral

info = corral.env()
record = {
    "argv": sys.argv[2:],
    "env": dict(os.environ),
    "job": {"rank": info.rank, "local_rank": info.local_rank, "world_size": info.world_size,
            "node_rank": info.node_rank, "num_nodes": info.num_nodes, "hosts": list(info.hosts),
            "job_name": info.job_name},
}
with open(os.path.join(sys.argv[1], f"rank-{info.rank}.json"), "w", encoding="utf-8") as handle:
    json.dump(record, handle, ensure_ascii=False)
print("args:", sys.argv[2:])
