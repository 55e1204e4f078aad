"""Where a node of a cloud batch job stands, from what the service tells its container.

Each service starts the same container on every node of a gang and says, in its own words,
which node this is and how to reach the others. These pure functions turn those words into
one :class:`NodePlace`: corral's node rank (the rendezvous node is always node 0), the
number of nodes, the rendezvous address, and every node's address where the service gives
them. Standard library (and corral's exception tree) only: this runs in the job's image
before anything else.

===========  =====================================================  =========================
service      this node / the nodes                                  rendezvous (node 0)
===========  =====================================================  =========================
aws-batch    AWS_BATCH_JOB_NODE_INDEX, AWS_BATCH_JOB_NUM_NODES,     children:
             AWS_BATCH_JOB_MAIN_NODE_INDEX                          AWS_BATCH_JOB_MAIN_NODE_
                                                                    PRIVATE_IPV4_ADDRESS; the
                                                                    main node: its own address
sagemaker    /opt/ml/input/config/resourceconfig.json:              the first host (algo-1)
             current_host, hosts (algo-1 ... algo-N)
gcp-batch    BATCH_TASK_INDEX, BATCH_TASK_COUNT, BATCH_HOSTS_FILE   the first line of the
             (one address per line, in task order)                  hosts file
azure-batch  AZ_BATCH_HOST_LIST (ip,ip,...), AZ_BATCH_MASTER_NODE   AZ_BATCH_MASTER_NODE's
             (ip:port), AZ_BATCH_IS_CURRENT_NODE_MASTER; this node  address
             is found by its own address in the host list
===========  =====================================================  =========================

A node's own address is what its host name resolves to, unless ``CORRAL_NODE_ADDRESS`` says
otherwise (a container whose host name resolves to something else; emulated nodes that
share one machine).
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from corral.errors import NodeStartError

SERVICES = ("aws-batch", "sagemaker", "gcp-batch", "azure-batch")
SAGEMAKER_RESOURCE_CONFIG = "/opt/ml/input/config/resourceconfig.json"


class NodePlaceError(NodeStartError):
    """The service's variables or files do not say where this node stands."""


@dataclass(frozen=True)
class NodePlace:
    service: str
    node_rank: int  # corral's: 0 is the rendezvous node
    num_nodes: int
    master_addr: str
    hosts: tuple[str, ...]  # every node's address in node-rank order; "" where unknown
    service_index: int  # the service's own number for this node


def own_address(env: Mapping[str, str]) -> str:
    """This node's address: ``CORRAL_NODE_ADDRESS``, else its host name's."""
    given = env.get("CORRAL_NODE_ADDRESS", "").strip()
    if given:
        return given
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError as exc:
        raise NodePlaceError(f"cannot find this node's own address ({exc}); set "
                             "CORRAL_NODE_ADDRESS") from None


def _number(env: Mapping[str, str], name: str, below: int | None = None) -> int:
    value = env.get(name, "")
    if not value.strip().isdigit():
        raise NodePlaceError(f"${name} is {value!r}; expected a whole number (is this "
                             "container part of the service's multi-node job?)")
    number = int(value)
    if below is not None and number >= below:
        raise NodePlaceError(f"${name} is {number}; expected a number below {below}")
    return number


def _rotate(index: int, main: int, count: int) -> int:
    """The service's node number -> corral's, with the main node as node 0."""
    return (index - main) % count


def aws_batch(env: Mapping[str, str]) -> NodePlace:
    """An AWS Batch multi-node parallel job's node. Only children are told the main node's
    address; the main node uses its own (not localhost: the children dial it)."""
    count = _number(env, "AWS_BATCH_JOB_NUM_NODES")
    if count < 1:
        raise NodePlaceError("$AWS_BATCH_JOB_NUM_NODES is 0")
    index = _number(env, "AWS_BATCH_JOB_NODE_INDEX", below=count)
    main = _number(env, "AWS_BATCH_JOB_MAIN_NODE_INDEX", below=count)
    if index == main:
        master = own_address(env)
    else:
        master = env.get("AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS", "").strip()
        if not master:
            raise NodePlaceError(
                f"node {index} is a child of the main node {main}, but "
                "$AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS is not set")
    hosts = tuple(master if i == 0 else "" for i in range(count))
    return NodePlace("aws-batch", _rotate(index, main, count), count, master, hosts, index)


def _host_order(name: str) -> tuple[str, int]:
    match = re.match(r"^(.*?)(\d+)$", name)
    return (match.group(1), int(match.group(2))) if match else (name, 0)


def sagemaker(config: Mapping[str, object]) -> NodePlace:
    """A SageMaker training job's instance, from its ``resourceconfig.json``."""
    hosts = config.get("hosts")
    current = config.get("current_host")
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
        raise NodePlaceError(f"resourceconfig.json: 'hosts' is {hosts!r}; expected a list of "
                             "host names (algo-1 ...)")
    ordered = tuple(sorted(hosts, key=_host_order))  # algo-2 before algo-10
    if current not in ordered:
        raise NodePlaceError(f"resourceconfig.json: 'current_host' {current!r} is not one of "
                             f"its hosts {list(ordered)}")
    rank = ordered.index(str(current))
    return NodePlace("sagemaker", rank, len(ordered), ordered[0], ordered, rank)


def read_sagemaker(path: str = SAGEMAKER_RESOURCE_CONFIG) -> NodePlace:
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as exc:
        raise NodePlaceError(f"cannot read SageMaker's {path}: {exc}") from None
    if not isinstance(config, dict):
        raise NodePlaceError(f"{path} holds {type(config).__name__}, not an object")
    return sagemaker(config)


def gcp_batch(env: Mapping[str, str], hosts_text: str) -> NodePlace:
    """A GCP Batch task of a task group with ``requireHostsFile``: task N is node N."""
    count = _number(env, "BATCH_TASK_COUNT")
    index = _number(env, "BATCH_TASK_INDEX", below=count)
    hosts = tuple(line.split()[0] for line in hosts_text.splitlines() if line.split())
    if len(hosts) != count:
        raise NodePlaceError(f"$BATCH_HOSTS_FILE lists {len(hosts)} host(s) for "
                             f"{count} task(s); expected one line per task")
    return NodePlace("gcp-batch", index, count, hosts[0], hosts, index)


def read_gcp_batch(env: Mapping[str, str]) -> NodePlace:
    path = env.get("BATCH_HOSTS_FILE", "")
    if not path:
        raise NodePlaceError("$BATCH_HOSTS_FILE is not set: the task group needs "
                             "requireHostsFile: true")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise NodePlaceError(f"cannot read $BATCH_HOSTS_FILE {path}: {exc}") from None
    return gcp_batch(env, text)


def azure_batch(env: Mapping[str, str]) -> NodePlace:
    """A node of an Azure Batch multi-instance task: the master node is node 0, the others
    follow in the host list's order; this node is found by its own address."""
    listed = [h.strip() for h in env.get("AZ_BATCH_HOST_LIST", "").split(",") if h.strip()]
    if not listed:
        raise NodePlaceError("$AZ_BATCH_HOST_LIST is empty: is this a multi-instance task?")
    master = env.get("AZ_BATCH_MASTER_NODE", "").strip().rsplit(":", 1)[0]
    if master not in listed:
        raise NodePlaceError(f"$AZ_BATCH_MASTER_NODE is {env.get('AZ_BATCH_MASTER_NODE')!r}; "
                             f"expected ADDRESS:PORT with an address of $AZ_BATCH_HOST_LIST")
    hosts = (master, *[h for h in listed if h != master])
    is_master = env.get("AZ_BATCH_IS_CURRENT_NODE_MASTER", "").lower() == "true"
    me = master if is_master else own_address(env)
    if me not in hosts:
        raise NodePlaceError(f"this node's address {me} is not in $AZ_BATCH_HOST_LIST "
                             f"({','.join(listed)}); set CORRAL_NODE_ADDRESS")
    return NodePlace("azure-batch", hosts.index(me), len(hosts), master, hosts,
                     listed.index(me))


def place(service: str, env: Mapping[str, str] | None = None) -> NodePlace:
    """This node's place, read the way ``service`` says it."""
    env = os.environ if env is None else env
    if service == "aws-batch":
        return aws_batch(env)
    if service == "sagemaker":
        return read_sagemaker(env.get("CORRAL_SAGEMAKER_RESOURCE_CONFIG",
                                      SAGEMAKER_RESOURCE_CONFIG))
    if service == "gcp-batch":
        return read_gcp_batch(env)
    if service == "azure-batch":
        return azure_batch(env)
    raise NodePlaceError(f"unknown service {service!r}; accepted: {', '.join(SERVICES)}")
