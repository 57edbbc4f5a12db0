"""The pure rules of a deployment of several instances (berth.domain.replicas), and its route's
shape (berth.node.routes): table-driven."""

import pytest

from berth.domain.pipeline import RouteRequest
from berth.domain.replicas import route_ports, scale_down_order, scale_refusal, status_after_report
from berth.domain.spec import MAX_REPLICAS, DeploymentSpec
from berth.domain.state import DeploymentState, InstanceState
from berth.domain.status import DeploymentStatus as D
from berth.domain.status import InstanceStatus as I
from berth.node.routes import LB_STRATEGY, route_config

MiB = 2**20


def instances(*statuses: I, ports: bool = True) -> list[InstanceState]:
    return [
        InstanceState(
            instance_id=f"i{n}", node="n", status=status, port=(9000 + n) if ports else None,
            routed=status is I.DEPLOYED,
        )
        for n, status in enumerate(statuses)
    ]


@pytest.mark.parametrize(
    "reported, reporter, statuses, expected",
    [
        # one instance: whatever it reports is the deployment's status (as before replicas)
        (D.DEPLOYING, 0, [I.COPYING_FILES], D.DEPLOYING),
        (D.DEPLOYED, 0, [I.DEPLOYED], D.DEPLOYED),
        (D.ERROR, 0, [I.ERROR], D.ERROR),
        (D.FAILED, 0, [I.FAILED], D.FAILED),
        # another serves: a failure or a start changes nothing (degraded)
        (D.ERROR, 1, [I.DEPLOYED, I.ERROR], None),
        (D.FAILED, 1, [I.DEPLOYED, I.FAILED], None),
        (D.INITIALIZING, 2, [I.DEPLOYED, I.DEPLOYED, I.STARTING], None),
        # any serving instance makes it DEPLOYED
        (D.DEPLOYED, 1, [I.ERROR, I.DEPLOYED], D.DEPLOYED),
        # none serves: FAILED waits while another is still on its way
        (D.FAILED, 0, [I.FAILED, I.ERROR], None),
        (D.FAILED, 0, [I.FAILED, I.STARTING], None),
        (D.FAILED, 1, [I.FAILED, I.FAILED], D.FAILED),
        (D.MUST_REDOWNLOAD, 0, [I.MUST_REDOWNLOAD, I.FAILED], D.MUST_REDOWNLOAD),
        (D.ERROR, 0, [I.ERROR, I.STARTING], D.ERROR),
    ],
)
def test_the_deployment_status_after_an_instance_reports(reported, reporter, statuses, expected):
    assert status_after_report(reported, f"i{reporter}", instances(*statuses)) is expected


@pytest.mark.parametrize(
    "statuses, leaving, expected",
    [
        ([I.STARTING], (), [9000]),  # the first instance: in the route beside its launch
        ([I.DEPLOYED, I.STARTING, I.COPYING_FILES], (), [9000]),  # others join once they serve
        ([I.DEPLOYED, I.DEPLOYED, I.ERROR], (), [9000, 9001]),  # a failing one leaves at once
        ([I.DEPLOYED, I.DEPLOYED], ("i1",), [9000]),  # a drained one leaves before it stops
        ([I.ERROR], (), [9000]),  # none serves: the one that will serve again stays (as before)
        ([I.FAILED], (), []),  # nothing will answer: no route
        ([], (), []),
    ],
)
def test_route_servers(statuses, leaving, expected):
    assert route_ports(instances(*statuses), leaving) == expected


def test_scale_down_takes_what_does_not_serve_first_then_the_newest():
    order = scale_down_order(instances(I.DEPLOYED, I.STARTING, I.DEPLOYED, I.ERROR, I.DEPLOYED))
    assert [instance.instance_id for instance in order] == ["i3", "i1", "i4", "i2", "i0"]


@pytest.mark.parametrize(
    "replicas, per_instance, budget, refused_with",
    [
        (3, 40 * MiB, 640 * MiB, None),
        (0, 40 * MiB, 640 * MiB, None),
        (2, None, None, None),  # nothing planned yet: only the range is checked
        (-1, None, None, "0 or more"),
        (MAX_REPLICAS + 1, None, None, f"at most {MAX_REPLICAS}"),
        (16, 50 * MiB, 640 * MiB, "16 x 50.0 MiB = 800 MiB, more than the 640 MiB"),
    ],
)
def test_scale_refusal(replicas, per_instance, budget, refused_with):
    refusal = scale_refusal(replicas, per_instance, budget)
    if refused_with is None:
        assert refusal is None
    else:
        assert refusal is not None and refused_with in refusal, refusal
    if replicas == 16 and per_instance:
        assert "at most 12 fit" in refusal


def test_state_counts_ready_and_degraded():
    state = DeploymentState(
        spec=DeploymentSpec(name="m", model="/m.gguf", replicas=3), status=D.DEPLOYED,
        instances=instances(I.DEPLOYED, I.ERROR, I.DEPLOYED),
    )
    assert (state.replicas, state.ready_replicas, state.degraded) == (3, 2, True)
    assert state.port == 9000  # the first instance's, as with one instance
    full = state.model_copy(update={"instances": instances(I.DEPLOYED, I.DEPLOYED, I.DEPLOYED)})
    assert full.degraded is False
    dumped = state.model_dump(mode="json")
    assert dumped["ready_replicas"] == 2 and dumped["degraded"] is True


def test_one_server_has_no_strategy_nor_retry_several_get_p2c_and_retry_both_a_new_connection_each():
    one = route_config(RouteRequest(deployment="q", ports=[9000], engine="llamacpp"), "tok")["http"]
    assert one["services"]["berth-q"]["loadBalancer"] == {
        "servers": [{"url": "http://127.0.0.1:9000"}], "serversTransport": "berth-upstream@file"
    }
    assert list(one["middlewares"]) == ["berth-q_strip"]
    many = route_config(RouteRequest(deployment="q", ports=[9000, 9001], engine="llamacpp"), "tok")["http"]
    balancer = many["services"]["berth-q"]["loadBalancer"]
    assert balancer["strategy"] == LB_STRATEGY == "p2c"
    assert [server["url"] for server in balancer["servers"]] == ["http://127.0.0.1:9000", "http://127.0.0.1:9001"]
    assert many["middlewares"]["berth-q_retry"]["retry"]["attempts"] >= 2
    assert balancer["serversTransport"] == "berth-upstream@file", "a new connection per request"
    for router in many["routers"].values():
        assert router["middlewares"][-1] == "berth-q_retry"
