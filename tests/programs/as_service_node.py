"""Run a cloud service's node command on an emulated node of the local backend, with that
service's environment faked for this node (a fake: on the service, the service sets it).

``as_service_node.py NODES.json -- COMMAND...``: NODES.json maps each node rank (as a
string) to the variables the service would give that node's container. The local backend's
own job variables are taken away first, so the command sees what a fresh container sees.
"""

import json
import os
import sys

OURS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR",
        "MASTER_PORT", "GROUP_RANK", "ROLE_RANK")


def main() -> None:
    nodes_file, sep, *command = sys.argv[1:]
    assert sep == "--" and command, "usage: as_service_node.py NODES.json -- COMMAND..."
    node = os.environ["NODE_RANK"]
    with open(nodes_file, encoding="utf-8") as handle:
        given = json.load(handle)[node]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CORRAL_") and k not in OURS}
    env.update(given)
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main()
