"""A Ray driver: ``ray_driver.py OUT MODE``.

tasks: one task pinned to each corral node (its ``corral_node_<N>`` resource) reports the Ray
node id and host it ran on; OUT gets them as JSON, with the cluster's nodes.
hold: writes OUT, then waits (the test kills a worker node meanwhile).
exit: exits with code 3 once the cluster is up.
"""

import json
import socket
import sys
import time

import ray

out, mode = sys.argv[1], sys.argv[2]
ray.init()
if mode == "exit":
    sys.exit(3)


@ray.remote(num_cpus=1)
def where(node: int) -> dict:
    return {"corral_node": node, "ray_node": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname()}


nodes = [n for n in ray.nodes() if n["Alive"]]
count = len(nodes)
if mode == "hold":
    with open(out, "w") as handle:
        json.dump({"nodes": count}, handle)
    ray.get(where.options(resources={"corral_node_1": 0.01}).remote(1))  # node 1 is alive
    time.sleep(600)
tasks = ray.get([where.options(resources={f"corral_node_{k}": 0.01}).remote(k)
                 for k in range(count)])
joined = {n["NodeID"]: sorted(k for k in n["Resources"] if k.startswith("corral_node_"))
          for n in nodes}
with open(out, "w") as handle:
    json.dump({"tasks": tasks, "nodes": joined}, handle)
print("tasks ran on", len({t["ray_node"] for t in tasks}), "Ray nodes")
