"""Free resources per node during one policy pass, and gang placement on them.

A :class:`Capacity` starts as the nodes minus what running jobs hold, and only shrinks
while the pass starts jobs (``take``) — so a request that did not fit once in a pass will
not fit later in it, which the policy uses to skip repeated checks. ``give`` adds back
(to plan the future: what is free once running jobs end).
"""

from __future__ import annotations

from collections.abc import Iterable

from corral.queue.model import GPU_EPSILON, Node, NodeShare, Request

EPSILON = 1e-9


def _gpu_fits(gpus: list[float], want: float) -> bool:
    if want <= 0:
        return True
    if want < 1:
        return any(free + GPU_EPSILON >= want for free in gpus)
    return sum(1 for free in gpus if free + GPU_EPSILON >= 1.0) >= want


def _pick_gpus(gpus: list[float], want: float) -> list[int]:
    """Which GPUs a node share takes: the fullest GPU that still has room for a fraction
    (so fractions pack onto as few GPUs as possible), else the first whole free GPUs."""
    if want <= 0:
        return []
    if want < 1:
        fitting = [(free, i) for i, free in enumerate(gpus) if free + GPU_EPSILON >= want]
        return [min(fitting)[1]]
    return [i for i, free in enumerate(gpus) if free + GPU_EPSILON >= 1.0][: int(want)]


class Capacity:
    """What is free on each node (parallel lists, indexed like ``names``)."""

    __slots__ = ("cpus", "gpus", "index", "memory", "names")

    def __init__(self, names: list[str], cpus: list[float], memory: list[float],
                 gpus: list[list[float]]) -> None:
        self.names = names
        self.cpus = cpus
        self.memory = memory
        self.gpus = gpus
        self.index = {name: i for i, name in enumerate(names)}

    @classmethod
    def empty(cls, nodes: Iterable[Node]) -> Capacity:
        nodes = list(nodes)
        return cls([n.name for n in nodes], [float(n.cpus) for n in nodes],
                   [float(n.memory) for n in nodes], [[1.0] * n.gpus for n in nodes])

    def copy(self) -> Capacity:
        return Capacity(self.names, self.cpus[:], self.memory[:], [g[:] for g in self.gpus])

    def node_fits(self, i: int, request: Request) -> bool:
        return (self.cpus[i] + EPSILON >= request.cpus
                and self.memory[i] + EPSILON >= request.memory
                and _gpu_fits(self.gpus[i], request.gpus))

    def fitting_nodes(self, request: Request, also: Capacity | None = None) -> list[int] | None:
        """The first ``request.nodes`` nodes each able to hold one share of the request
        (and, if ``also`` is given, able to hold it there too, on the same GPUs); None if
        there are not enough."""
        wanted = request.nodes
        found: list[int] = []
        for i in range(len(self.cpus)):
            if self.node_fits(i, request) and (also is None or self._fits_in_both(i, request,
                                                                                   also)):
                found.append(i)
                if len(found) == wanted:
                    return found
        return None

    def _fits_in_both(self, i: int, request: Request, also: Capacity) -> bool:
        if not also.node_fits(i, request):
            return False
        if request.gpus <= 0:
            return True
        both = [min(a, b) for a, b in zip(self.gpus[i], also.gpus[i], strict=True)]
        return _gpu_fits(both, request.gpus)

    def take(self, nodes: list[int], request: Request,
             also: Capacity | None = None) -> tuple[NodeShare, ...]:
        """Allocate one share of ``request`` on each of ``nodes`` (from ``also`` too)."""
        shares = []
        for i in nodes:
            gpus = self.gpus[i]
            if also is not None and request.gpus > 0:
                picked = _pick_gpus([min(a, b) for a, b in zip(gpus, also.gpus[i], strict=True)],
                                    request.gpus)
            else:
                picked = _pick_gpus(gpus, request.gpus)
            fraction = min(request.gpus, 1.0)
            share = NodeShare(self.names[i], request.cpus, request.memory,
                              tuple((g, fraction) for g in picked))
            self.remove(share)
            if also is not None:
                also.remove(share)
            shares.append(share)
        return tuple(shares)

    def remove(self, share: NodeShare) -> None:
        i = self.index[share.node]
        self.cpus[i] -= share.cpus
        self.memory[i] -= share.memory
        gpus = self.gpus[i]
        for g, fraction in share.gpus:
            gpus[g] -= fraction

    def give(self, share: NodeShare) -> int:
        """Add a share back; returns the node's index."""
        i = self.index[share.node]
        self.cpus[i] += share.cpus
        self.memory[i] += share.memory
        gpus = self.gpus[i]
        for g, fraction in share.gpus:
            gpus[g] += fraction
        return i
