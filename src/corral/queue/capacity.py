"""Free resources per node during one policy pass, and gang placement on them.

A :class:`Capacity` starts as the nodes minus what running jobs hold, and only shrinks
while the pass starts jobs (``take``) — so a request that did not fit once in a pass will
not fit later in it, which the policy uses to skip repeated checks. ``give`` adds back
(to plan the future: what is free once running jobs end).
"""

from __future__ import annotations

from bisect import bisect_left, insort
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


def _whole(gpus: list[float]) -> int:
    return sum(1 for free in gpus if free + GPU_EPSILON >= 1.0)


class Capacity:
    """What is free on each node (parallel lists, indexed like ``names``).

    To look at few nodes per request even with thousands of them, it keeps, once asked to
    place something, each node's free CPUs, memory, largest GPU fraction and whole GPUs in
    four sorted indexes: a request then scans only the nodes with enough of its scarcest
    resource, fullest first (best fit), and fails at once when too few nodes have enough.
    ``remove`` leaves the indexes as they are (upper bounds); ``give`` drops them (they
    are rebuilt when next needed).
    """

    __slots__ = ("cpus", "gpus", "index", "indexes", "memory", "names")

    def __init__(self, names: list[str], cpus: list[float], memory: list[float],
                 gpus: list[list[float]], index: dict[str, int] | None = None) -> None:
        self.names = names
        self.cpus = cpus
        self.memory = memory
        self.gpus = gpus
        self.index = index if index is not None else {name: i for i, name in enumerate(names)}
        self.indexes: tuple[list[tuple[float, int]], ...] | None = None

    @classmethod
    def empty(cls, nodes: Iterable[Node]) -> Capacity:
        nodes = list(nodes)
        return cls([n.name for n in nodes], [float(n.cpus) for n in nodes],
                   [float(n.memory) for n in nodes], [[1.0] * n.gpus for n in nodes])

    def copy(self) -> Capacity:
        return Capacity(self.names, self.cpus[:], self.memory[:], [g[:] for g in self.gpus],
                        self.index)

    def _keys(self, i: int) -> tuple[float, float, float, float]:
        gpus = self.gpus[i]
        return (self.cpus[i], self.memory[i], max(gpus, default=0.0), float(_whole(gpus)))

    def _value(self, i: int, dimension: int) -> float:
        if dimension == 0:
            return self.cpus[i]
        if dimension == 1:
            return self.memory[i]
        gpus = self.gpus[i]
        return max(gpus, default=0.0) if dimension == 2 else float(_whole(gpus))

    def _build(self) -> tuple[list[tuple[float, int]], ...]:
        keys = [self._keys(i) for i in range(len(self.cpus))]
        self.indexes = tuple(sorted((k[d], i) for i, k in enumerate(keys)) for d in range(4))
        return self.indexes

    def node_fits(self, i: int, request: Request) -> bool:
        return (self.cpus[i] + EPSILON >= request.cpus
                and self.memory[i] + EPSILON >= request.memory
                and _gpu_fits(self.gpus[i], request.gpus))

    def fitting_nodes(self, request: Request, also: Capacity | None = None) -> list[int] | None:
        """``request.nodes`` nodes each able to hold one share of the request (and, if
        ``also`` is given, able to hold it there too, on the same GPUs), the fullest such
        nodes first; None if there are not enough."""
        indexes = self.indexes or self._build()
        wanted = request.nodes
        gpus = request.gpus
        thresholds = [(0, request.cpus), (1, request.memory)]
        if gpus > 0:
            thresholds.append((2, gpus) if gpus < 1 else (3, gpus))
        best: list[tuple[float, int]] | None = None
        start, dimension, threshold = 0, 0, 0.0
        for d, want in thresholds:
            column = indexes[d]
            position = bisect_left(column, (want - EPSILON, -1))
            if len(column) - position < wanted:
                return None
            if best is None or len(column) - position < len(best) - start:
                best, start, dimension, threshold = column, position, d, want - EPSILON
        assert best is not None
        found: list[int] = []
        for value, i in best[start:]:
            if self.node_fits(i, request) and (also is None or self._fits_in_both(i, request,
                                                                                   also)):
                found.append(i)
                if len(found) == wanted:
                    return found
            else:
                real = self._value(i, dimension)
                if real < threshold:  # a stale entry: move it to where it belongs now
                    del best[bisect_left(best, (value, i))]
                    insort(best, (real, i))
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
        """Take a share away. The indexes keep the node's old, larger values: they stay
        upper bounds, so they still reject and still find every node that fits (each
        candidate is checked against the real figures)."""
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
        self.indexes = None
        return i
