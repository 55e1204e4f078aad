"""MASTER_PORT: chosen outside the kernel's ephemeral range, and probed before use."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from corral.errors import BackendError
from corral.ports import (
    DEFAULT_EPHEMERAL_RANGE,
    HIGHEST_PORT,
    LOWEST_PORT,
    ephemeral_range,
    pick_port,
)


class ProposesFirst(random.Random):
    """A seeded rng whose first proposal is ``first``; it remembers what it proposed."""

    def __init__(self, first: int) -> None:
        super().__init__(1234)
        self.first = first
        self.proposed: list[int] = []

    def sample(self, population: Sequence[Any], k: int, **kwargs: Any) -> list[Any]:
        rest = [port for port in super().sample(population, k) if port != self.first]
        self.proposed = [self.first, *rest][:k]
        return self.proposed


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        sock.listen()
        return True


@pytest.fixture
def listener(request: pytest.FixtureRequest) -> Iterator[int]:
    """A port outside the ephemeral range that a socket listens on (on the address given)."""
    address = getattr(request, "param", "127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, pick_port(address)))
        except OSError as exc:
            pytest.skip(f"cannot listen on {address}: {exc}")
        sock.listen()
        yield sock.getsockname()[1]


def test_range_file_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "ip_local_port_range"
    path.write_text("40000\t50000\n", encoding="ascii")
    assert ephemeral_range(path) == (40000, 50000)


@pytest.mark.parametrize("content", ["", "32768", "1 2 3", "low high", "50000 40000",
                                     "0 60999", "1024 70000", b"\xff\xfe"],
                         ids=["empty", "one-number", "three-numbers", "words", "reversed",
                              "zero", "too-high", "binary"])
def test_malformed_range_file_falls_back(tmp_path: Path, content: str | bytes) -> None:
    path = tmp_path / "ip_local_port_range"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="ascii")
    assert ephemeral_range(path) == DEFAULT_EPHEMERAL_RANGE == (32768, 60999)
    assert ephemeral_range(tmp_path / "missing") == DEFAULT_EPHEMERAL_RANGE


def test_picked_port_is_outside_the_ephemeral_range_and_bindable() -> None:
    low, high = ephemeral_range()
    for _ in range(20):
        port = pick_port()
        assert LOWEST_PORT <= port <= HIGHEST_PORT
        assert not low <= port <= high
        assert bindable(port)


def test_given_range_and_avoid_are_respected() -> None:
    # only 65530..65535 lie above this range; four of them are avoided
    allowed = {65530, 65531}
    for seed in range(10):
        port = pick_port(ephemeral=(1024, 65529), avoid={65532, 65533, 65534, 65535},
                         rng=random.Random(seed))
        assert port in allowed


@pytest.mark.parametrize("listener", ["127.0.0.1", "127.0.0.2"], indirect=True,
                         ids=["same-address", "other-address"])
def test_port_someone_listens_on_is_never_returned(listener: int) -> None:
    # on another address the bind probe would succeed; the listening check catches it
    rng = ProposesFirst(listener)
    port = pick_port("127.0.0.1", rng=rng)
    assert rng.proposed[0] == listener
    assert port != listener
    assert bindable(port)


def test_no_free_port_is_a_backend_error(listener: int) -> None:
    with pytest.raises(BackendError, match=r"no free TCP port on 127\.0\.0\.1: all 1 ports"):
        pick_port(rng=ProposesFirst(listener), probes=1)


def test_ephemeral_range_covering_every_port_is_a_backend_error() -> None:
    with pytest.raises(BackendError, match=r"ephemeral range 1024-65535 .*sysctl"):
        pick_port(ephemeral=(1024, 65535))


def test_local_jobs_rendezvous_outside_the_ephemeral_range(tmp_path: Path) -> None:
    from corral.backends.local import LocalBackend
    from corral.spec import JobSpec

    low, high = ephemeral_range()
    spec = JobSpec(entrypoint={"kind": "command", "argv": ["true"]}, nodes=2,
                   launcher="torchrun", workdir=str(tmp_path))
    ports = {LocalBackend().render(spec).master_port for _ in range(20)}
    assert all(not low <= port <= high for port in ports)


def test_a_span_of_ports_lies_outside_the_range_and_is_free() -> None:
    # above this range lie 65500..65535: a run of 32 can start at 65500..65504 only
    for seed in range(10):
        port = pick_port(ephemeral=(1024, 65499), span=32, rng=random.Random(seed))
        assert 65500 <= port <= 65504
    with pytest.raises(BackendError, match="no TCP port to choose"):
        pick_port(ephemeral=(1024, 65510), span=32)
    with pytest.raises(BackendError, match="no TCP port to choose"):
        pick_port(ephemeral=(1024, 65499), span=32, avoid={65531})  # in every run


def test_a_span_with_a_port_someone_listens_on_is_never_returned(listener: int) -> None:
    rng = ProposesFirst(listener - 5)  # the listener is the sixth port of the first run
    port = pick_port("127.0.0.1", rng=rng, span=8)
    assert rng.proposed[0] == listener - 5 and port != listener - 5
    assert all(bindable(p) for p in range(port, port + 8))
