"""Choosing a job's rendezvous port (``MASTER_PORT``).

A port the kernel hands out for outgoing connections (its *ephemeral* range,
``/proc/sys/net/ipv4/ip_local_port_range``) may be taken by any connection between the
moment corral picks it and the moment rank 0 binds it. So :func:`pick_port` draws at
random from the ports in [1024, 65535] outside that range, and probes each candidate
before returning it: nothing may accept connections on it, and it must bind on every
address (the wildcard) with ``SO_REUSEADDR`` off, which fails while any socket holds it.
A probe cannot reserve the port; it makes a clash unlikely, not impossible.

A job owns :data:`PORT_BLOCK` ports from ``MASTER_PORT`` up: the Slurm backend gives each
job a block of its own, and TensorFlow's workers listen on the ports after ``MASTER_PORT``
(:mod:`corral.runtime.frameworks`). Locally, ``span`` asks for several ports in a row.
"""

from __future__ import annotations

import errno
import os
import random
import socket
from collections.abc import Collection
from pathlib import Path
from typing import Any

from corral.errors import BackendError

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_RANGE = (32768, 60999)  # Linux's default
LOWEST_PORT = 1024  # below: privileged ports
HIGHEST_PORT = 65535
PROBES = 64
PORT_BLOCK = 32  # ports a job owns from MASTER_PORT: MASTER_PORT + 0 .. MASTER_PORT + 31


def ephemeral_range(path: str | os.PathLike[str] = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's ephemeral port range (low, high), both included.

    Linux's default (32768, 60999) when the file is missing, unreadable or malformed.
    """
    try:
        fields = Path(path).read_text(encoding="ascii").split()
        low, high = (int(field) for field in fields)
    except (OSError, UnicodeDecodeError, ValueError):
        return DEFAULT_EPHEMERAL_RANGE
    if not 0 < low <= high <= HIGHEST_PORT:
        return DEFAULT_EPHEMERAL_RANGE
    return low, high


def pick_port(
    host: str = "127.0.0.1",
    *,
    avoid: Collection[int] = (),
    rng: random.Random | None = None,
    ephemeral: tuple[int, int] | None = None,
    probes: int = PROBES,
    span: int = 1,
) -> int:
    """A free TCP port on ``host``, outside the ephemeral range and outside ``avoid``.

    ``ephemeral`` is the range to stay out of (default: :func:`ephemeral_range`);
    ``rng`` draws the candidates (``rng.sample``); at most ``probes`` are tried.
    With ``span`` > 1, the ``span`` ports from the one returned all meet those conditions
    and are all free. Raises :class:`~corral.errors.BackendError` when none of them is free.
    """
    low, high = ephemeral or ephemeral_range()
    excluded = set(avoid)
    span = max(span, 1)
    candidates = [port for port in (*range(LOWEST_PORT, low - span + 1),
                                    *range(high + 1, HIGHEST_PORT - span + 2))
                  if not excluded or excluded.isdisjoint(range(port, port + span))]
    source = str(EPHEMERAL_RANGE_FILE) if ephemeral is None else "the range given"
    if not candidates:
        raise BackendError(
            f"no TCP port to choose on {host}: every port in [{LOWEST_PORT}, {HIGHEST_PORT}] "
            f"is in the kernel's ephemeral range {low}-{high} (from {source}) or among the "
            f"{len(excluded)} ports to avoid; narrow the ephemeral range, e.g. "
            "sysctl -w net.ipv4.ip_local_port_range='32768 60999'")
    family, sockaddr = _resolve(host)
    draw = rng or random.SystemRandom()
    tried: list[int] = draw.sample(candidates, min(probes, len(candidates)))
    for port in tried:
        block = range(port, port + span)
        if (not excluded.isdisjoint(block) or port < LOWEST_PORT or block[-1] > HIGHEST_PORT
                or (port <= high and block[-1] >= low)):
            continue  # a proposal from outside the candidates (a custom rng)
        if all(_is_free(family, sockaddr, p) for p in block):
            return port
    what = "ports" if span == 1 else f"runs of {span} ports"
    raise BackendError(
        f"no free TCP port on {host}: all {len(tried)} {what} probed outside the kernel's "
        f"ephemeral range {low}-{high} (from {source}) are listened on or cannot be bound; "
        "stop the programs holding them (see `ss -ltn`), or run fewer jobs at once")


def _resolve(host: str) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise BackendError(
            f"cannot choose a port on host {host!r}: the name does not resolve ({exc}); "
            "give an IP address or a host name of this machine") from exc
    family, _, _, _, sockaddr = infos[0]
    return family, tuple(sockaddr)


def _is_free(family: socket.AddressFamily, sockaddr: tuple[Any, ...], port: int) -> bool:
    """Nothing accepts connections on the port, and it binds on every address of the
    family (the wildcard) without SO_REUSEADDR: that fails while any socket, on any
    address, holds the port."""
    target = (sockaddr[0], port, *sockaddr[2:])  # IPv6 keeps its flow info and scope id
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            if probe.connect_ex(target) != errno.ECONNREFUSED:
                return False  # something accepted, or we cannot tell
        except OSError:
            return False
    wildcard = ("::" if family == socket.AF_INET6 else "0.0.0.0", port, *sockaddr[2:])
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        try:
            probe.bind(wildcard)
        except OSError:
            return False
    return True
