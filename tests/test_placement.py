"""berth.domain.placement: the choice of a node for an instance, table-driven."""

from datetime import datetime, timezone

import pytest

from berth.domain.cluster import NodeFacts, NodeStatus, NodeView, Reservation, ReserveRequest
from berth.domain.placement import choose, files_node, free_by_node
from berth.domain.replicas import cluster_refusal
from berth.domain.state import InstanceState

GIB = 2**30
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def node(name: str, capacity: float = 4, status: NodeStatus = NodeStatus.READY, engines=("llamacpp",)) -> NodeView:
    return NodeView(
        facts=NodeFacts(
            node_id=name, gateway_url=f"http://{name}:8080", incarnation="i", os="Linux", arch="x86_64",
            ram_bytes=int(capacity * GIB), engines=list(engines), capacity_bytes=int(capacity * GIB),
        ),
        status=status, since=T0,
    )


def held(instance: str, where: str, gib: float, deployment: str = "other") -> Reservation:
    return Reservation(instance_id=instance, deployment=deployment, node=where, bytes=int(gib * GIB))


def ask(**fields) -> ReserveRequest:
    return ReserveRequest(**{"instance_id": "dep-1", "deployment": "dep", "model": "/m/a.gguf", "bytes": GIB, **fields})


A, B, C = node("a"), node("b"), node("c")

CASES = [
    # (what, request, nodes, reservations, expected node or None, {node: words in its reason})
    ("spread: the most free", ask(), [A, B], [held("x", "a", 1)], "b", {}),
    ("spread: fewest of this deployment first", ask(), [A, node("b", 8)], [held("x", "b", 1, "dep")], "a", {}),
    ("pack: most of this deployment", ask(strategy="pack"), [A, node("b", 8)], [held("x", "a", 1, "dep")], "a", {}),
    ("pack: then the least free", ask(strategy="pack"), [A, node("b", 8)], [], "a", {}),
    ("the node that holds the files", ask(model="b:/srv/m.gguf"), [A, B], [], "b", {}),
    ("a URL is not a node path", ask(model="https://h/m.gguf"), [node("https"), B], [], "b", {}),
    ("pin: only that node", ask(pin="a"), [A, node("b", 8)], [], "a", {}),
    ("pin never elsewhere", ask(pin="a", bytes=5 * GIB), [A, node("b", 8)], [], None,
     {"a": ["needs 5.0 GiB"], "b": ["pinned to node a"]}),
    ("allowed", ask(allowed=["b"]), [A, B], [], "b", {}),
    ("not allowed", ask(allowed=["c"]), [A, B], [], None, {"a": ["not among"], "b": ["not among"]}),
    ("avoid", ask(avoid=["b"]), [A, node("b", 8)], [], "a", {}),
    ("READY only", ask(), [node("a", status=NodeStatus.DOWN), node("b", status=NodeStatus.DRAINING)], [], None,
     {"a": ["DOWN"], "b": ["DRAINING"]}),
    ("memory: reservations, not usage", ask(bytes=2 * GIB), [A], [held("x", "a", 3)], None,
     {"a": ["needs 2.0 GiB", "1.0 GiB free", "3.0 GiB reserved"]}),
    ("memory: exactly full fits", ask(bytes=GIB), [A], [held("x", "a", 3)], "a", {}),
    ("its own reservation is not counted", ask(bytes=4 * GIB), [A], [held("dep-1", "a", 3, "dep")], "a", {}),
    ("engine override", ask(engine="vllm"), [A, node("g", engines=("llamacpp", "vllm"))], [], "g", {}),
    ("engine override nowhere", ask(engine="mlx"), [A], [], None, {"a": ["engine mlx cannot run"]}),
    ("safetensors needs vllm or mlx", ask(model="/m/x.safetensors"), [A, node("m", engines=("mlx",))], [], "m", {}),
    ("safetensors nowhere", ask(model="/m/x.safetensors"), [A], [], None, {"a": ["vllm or mlx"]}),
    ("unknown format: the node decides", ask(model="hf:org/repo"), [A], [], "a", {}),
    ("no node at all", ask(), [], [], None, {}),
    ("confirm: fits beside the others", ask(node="a", bytes=3 * GIB), [A, B], [held("dep-1", "a", 0, "dep")], "a", {}),
    ("confirm: refused", ask(node="a", bytes=5 * GIB), [A, B], [held("dep-1", "a", 0, "dep")], None,
     {"a": ["needs 5.0 GiB"]}),
    ("confirm on a draining node it is on", ask(node="a"), [node("a", status=NodeStatus.DRAINING)],
     [held("dep-1", "a", 0, "dep")], "a", {}),
    ("confirm on an unknown node", ask(node="z"), [A], [], None, {"z": ["not a node"]}),
]


@pytest.mark.parametrize("what, request_, nodes, reservations, expected, reasons", CASES, ids=[c[0] for c in CASES])
def test_choose(what, request_, nodes, reservations, expected, reasons):
    choice = choose(request_, nodes, reservations)
    assert choice.node == expected, choice
    if expected is None:
        assert set(choice.refusals) == {n.facts.node_id for n in nodes} or request_.node, choice.refusals
        for where, words in reasons.items():
            for word in words:
                assert word in choice.refusals[where], (word, choice.refusals[where])


def test_retry_only_when_a_node_that_is_not_ready_would_fit():
    down = node("a", status=NodeStatus.DOWN)
    assert choose(ask(), [down], []).retry
    assert not choose(ask(bytes=9 * GIB), [down], []).retry  # would not fit anyway: fail now
    assert not choose(ask(), [node("a", status=NodeStatus.DRAINING)], []).retry
    assert choose(ask(pin="a"), [down, B], []).retry  # pinned: waits for its node, never b
    assert choose(ask(), [], []).retry  # no node has joined yet (right after `berth up`): wait for one


def apply(request: ReserveRequest, nodes, reservations: list[Reservation]) -> str | None:
    """What the cluster workflow does with a choice: record the reservation."""
    choice = choose(request, nodes, reservations)
    if choice.node:
        reservations.append(Reservation(instance_id=request.instance_id, deployment=request.deployment,
                                        node=choice.node, bytes=request.bytes))
    return choice.node


def test_twenty_requests_onto_nodes_that_hold_ten_place_exactly_ten():
    nodes = [node("a", 5), node("b", 3), node("c", 2)]  # 10 GiB
    reservations: list[Reservation] = []
    placed = [apply(ask(instance_id=f"d{i}-1", deployment=f"d{i}", bytes=GIB), nodes, reservations) for i in range(20)]
    assert sum(1 for p in placed if p) == 10
    assert {n.facts.node_id: sum(r.bytes for r in reservations if r.node == n.facts.node_id) // GIB for n in nodes} == {
        "a": 5, "b": 3, "c": 2
    }
    refused = choose(ask(instance_id="late", bytes=GIB), nodes, reservations)
    assert refused.node is None and all("needs 1.0 GiB, 0 B free" in why or "needs 1.0 GiB, 0" in why
                                        for why in refused.refusals.values()), refused.refusals


def test_spread_puts_three_replicas_on_three_nodes_and_pack_on_one():
    nodes = [node("a"), node("b"), node("c")]
    spread: list[Reservation] = []
    assert sorted(apply(ask(instance_id=f"dep-{i}"), nodes, spread) for i in range(3)) == ["a", "b", "c"]
    packed: list[Reservation] = []
    assert {apply(ask(instance_id=f"dep-{i}", strategy="pack"), nodes, packed) for i in range(3)} == {"a"}


def test_a_pinned_spec_is_never_placed_elsewhere():
    nodes = [node("a", 1), node("b", 100), node("c", 100, status=NodeStatus.READY)]
    reservations: list[Reservation] = []
    where = [apply(ask(instance_id=f"dep-{i}", pin="a", bytes=GIB // 2), nodes, reservations) for i in range(5)]
    assert where == ["a", "a", None, None, None]


def test_files_node_and_free_by_node():
    assert files_node("gpu-1:/srv/models/m.gguf") == "gpu-1"
    assert files_node("/srv/m.gguf") is None and files_node("hf:org/repo") is None
    assert files_node("https://host/m.gguf") is None
    free = free_by_node(ask(allowed=["a", "b"]), [A, B, C], [held("x", "a", 1), held("mine", "b", 2, "dep")])
    assert free == {"a": 3 * GIB, "b": 4 * GIB}  # its own deployment's reservations are not counted


def mine(*where: tuple[str, float]) -> list[InstanceState]:
    return [InstanceState(instance_id=f"dep-{i}", node=node, reserved_bytes=int(gib * GIB)) for i, (node, gib) in enumerate(where)]


@pytest.mark.parametrize("replicas, instances, free, refused", [
    (3, mine(("a", 1), ("b", 1)), {"a": 2 * GIB, "b": GIB}, False),  # a has room for one more
    (4, mine(("a", 1), ("b", 1)), {"a": 2 * GIB, "b": GIB}, True),
    (2, mine(("a", 1), ("b", 1)), {"a": GIB, "b": GIB}, False),  # scale down / same: never refused
    (5, mine(), {}, False),  # no answer from the cluster yet
    (3, mine(("a", 1), ("", 0)), {"a": 2 * GIB}, False),  # an instance not placed yet holds nothing
])
def test_cluster_refusal(replicas, instances, free, refused):
    why = cluster_refusal(replicas, instances, GIB, free)
    assert bool(why) is refused, why
    if refused:
        assert f"{replicas} instances do not fit the cluster's memory" in why and "each needs 1.0 GiB" in why
