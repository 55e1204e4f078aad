"""A node's labelled log: what :mod:`corral.runtime.pod` (and so every node of a Kubernetes
pod or a cloud batch container) writes to its one output stream.

``[rank N] text`` is rank N's line, ``[node N] text`` the node agent's or launcher's own,
``[corral] text`` corral's news of the node (``rank 3 exited with code 7 at <time>``), and
``[result N] <base64>`` a distributed function's result. The engine keeps that stream (a pod
log, a CloudWatch log stream, a Cloud Logging entry...); these pure functions read it back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

from corral.logs import LogSource

LOG_LINE = re.compile(r"^\[(rank|node|corral|result) ?(\d*)\] ?(.*)$")
EXIT_LINE = re.compile(r"^(?:rank (\d+)|the launcher of node \d+) exited with code (-?\d+) "
                       r"at ([\d.]+)")


def parse_pod_log(lines: Sequence[str], pod_node: int) -> Iterator[tuple[LogSource, str]]:
    """A node's log as (source, line): ``[rank N]`` lines belong to rank N; ``[node N]`` and
    ``[corral]`` lines to the node; results and unlabelled lines are not shown."""
    for line in lines:
        match = LOG_LINE.match(line)
        if not match or match.group(1) == "result":
            continue
        kind, number, text = match.groups()
        if kind == "rank":
            yield LogSource("rank", int(number)), text
        else:
            yield LogSource("node", int(number) if number else pod_node), text


def first_exit(lines: Sequence[str], pod_node: int) -> tuple[float, int | None, int] | None:
    """(when, rank or None for a launcher, exit code) of the first failure a node reported."""
    for source, text in parse_pod_log(lines, pod_node):
        match = EXIT_LINE.match(text) if source.kind == "node" else None
        if match:
            rank = int(match.group(1)) if match.group(1) else None
            return float(match.group(3)), rank, int(match.group(2))
    return None


def results(lines: Sequence[str]) -> dict[int, bytes]:
    """A distributed function's results in a node's log (``[result N] <base64>``)."""
    import base64

    found: dict[int, bytes] = {}
    for line in lines:
        match = LOG_LINE.match(line)
        if match and match.group(1) == "result" and match.group(2):
            found[int(match.group(2))] = base64.b64decode(match.group(3))
    return found


def first_failed_rank(logs: Mapping[int, Sequence[str]], launcher: str | None
                      ) -> tuple[int, int | None, int | None, list[str]] | None:
    """From the logs of nodes that failed: (node, rank, exit code, that rank's last lines) of
    the earliest failure any of them reported; None when none reported one. A launcher that
    names the failing rank itself (torchrun's root cause, mpirun's first process) is
    believed over corral's line about the launcher's own exit."""
    from corral.launchers.failures import first_failure

    exits = sorted((found, node) for node, lines in logs.items()
                   if (found := first_exit(lines, node)) is not None)
    if not exits:
        return None
    (_, rank, code), node = exits[0]
    if rank is None:
        inner = first_failure(launcher or "none", "\n".join(
            t for s, t in parse_pod_log(logs[node], node) if s.kind == "node"))
        if inner is not None:
            rank, code = inner.rank, inner.returncode
    own = [t for s, t in parse_pod_log(logs[node], node)
           if rank is None or (s.kind == "rank" and s.number == rank)]
    return node, rank, code, own[-20:]


def nodes_to_read(nodes: int, procs_per_node: int, launcher: str | None,
                  rank: int | None) -> list[int]:
    """The nodes whose logs may hold ``rank``'s lines (every node for ``None``). A rank lives
    on node ``rank // procs_per_node``, except under torchrun, whose c10d rendezvous numbers
    the nodes in its own order (``--node-rank`` is ignored): then any node may hold it."""
    if rank is None or launcher == "torchrun":
        return list(range(nodes))
    return [rank // procs_per_node]
