"""What a node tells the cluster when it joins: its capacity is its memory budget, or
BERTH_NODE_CAPACITY (overcommit on purpose) when that is set and valid."""

from berth.node.cluster_facts import node_facts
from berth.settings import Settings


def facts(tmp_path, monkeypatch, **env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return node_facts(Settings.from_env({"BERTH_HOME": str(tmp_path)}), "incarnation-1")


def test_capacity_is_the_memory_budget_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("BERTH_NODE_CAPACITY", raising=False)
    monkeypatch.delenv("BERTH_MEMORY_LIMIT", raising=False)
    seen = facts(tmp_path, monkeypatch)
    assert 0 < seen.capacity_bytes <= seen.ram_bytes
    assert facts(tmp_path, monkeypatch, BERTH_MEMORY_LIMIT="640MiB").capacity_bytes == 640 * 2**20


def test_node_capacity_overcommits_on_purpose(tmp_path, monkeypatch):
    monkeypatch.delenv("BERTH_MEMORY_LIMIT", raising=False)
    assert facts(tmp_path, monkeypatch, BERTH_NODE_CAPACITY="4TiB").capacity_bytes == 4 * 2**40


def test_an_invalid_node_capacity_is_ignored_and_logged(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("BERTH_MEMORY_LIMIT", raising=False)
    seen = facts(tmp_path, monkeypatch, BERTH_NODE_CAPACITY="lots")
    assert seen.capacity_bytes <= seen.ram_bytes
    assert "BERTH_NODE_CAPACITY ignored" in caplog.text
