"""The port registry: idempotent per instance, never two instances on one port, survives restarts."""

import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
from temporalio.exceptions import ApplicationError

from berth.node.ports import PortRegistry
from berth.testing.harness import free_port_block


@pytest.fixture
def port_range():
    low, high = (int(p) for p in free_port_block().split("-"))
    return low, low + 19


def test_allocation_is_idempotent_and_survives_a_new_registry(tmp_path, port_range):
    first = PortRegistry(tmp_path / "ports.sqlite", port_range)
    port = first.allocate("a-1")
    assert first.allocate("a-1") == port
    assert PortRegistry(tmp_path / "ports.sqlite", port_range).allocate("a-1") == port


def test_concurrent_allocations_never_share_a_port(tmp_path, port_range):
    db = tmp_path / "ports.sqlite"
    PortRegistry(db, port_range)

    def allocate(i):
        return PortRegistry(db, port_range).allocate(f"inst-{i}")

    with ThreadPoolExecutor(8) as pool:
        ports = list(pool.map(allocate, range(16)))
    assert len(set(ports)) == 16
    assert all(port_range[0] <= p <= port_range[1] for p in ports)


def test_a_port_held_by_someone_else_is_skipped(tmp_path, port_range):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port_range[0]))
        holder.listen()
        port = PortRegistry(tmp_path / "ports.sqlite", port_range).allocate("b-1")
    assert port != port_range[0]


def test_release_frees_the_port_for_the_next_instance(tmp_path):
    low = int(free_port_block().split("-")[0])
    registry = PortRegistry(tmp_path / "ports.sqlite", (low, low))
    assert registry.allocate("c-1") == low
    with pytest.raises(ApplicationError, match="no free port"):
        registry.allocate("c-2")
    registry.release("c-1")
    assert registry.allocate("c-2") == low
    assert registry.reserved() == {"c-2": low}
