"""POST /v1/plan: the dry-run memory plan and its three context options (berth.domain.memory_options,
berth.api.routes_plan), against the memory planner's own arithmetic and real model files."""

import pytest
from fastapi.testclient import TestClient

from berth.api.app import create_app
from berth.domain.memory import (
    MIN_CONTEXT,
    Device,
    estimate,
    largest_fitting_context,
    suggested_context,
)
from berth.domain.memory_options import FAST_CONTEXT, HEADROOM_FRACTION, context_options
from berth.domain.model_facts import ModelFacts
from berth.node.memory_plan import MEMORY_LIMIT_ENV
from berth.settings import Settings

GIB, MIB = 2**30, 2**20


def facts(weights: int, trained: int | None = 32768, layers: int = 24, kv_heads: int = 8, head_dim: int = 128) -> ModelFacts:
    return ModelFacts(
        format="gguf", path="/m/model.gguf", name="m", n_layers=layers, n_kv_heads=kv_heads, head_dim=head_dim,
        trained_context=trained, weights_bytes=weights, file_bytes=weights,
    )


# (model, budget, replicas, device)
FITTING = [
    (facts(1 * GIB), 8 * GIB, 1, Device.CPU),
    (facts(1 * GIB), 8 * GIB, 3, Device.CPU),
    (facts(4 * GIB, trained=131072), 24 * GIB, 1, Device.GPU),
    (facts(200 * MIB, trained=2048, layers=2, kv_heads=2, head_dim=32), 640 * MIB, 1, Device.CPU),
    (facts(100 * MIB, trained=256, layers=2), 2 * GIB, 1, Device.CPU),  # trained context under MIN_CONTEXT
    (facts(6 * GIB), int(7.2 * GIB), 1, Device.UNIFIED),  # little room left
    (facts(1 * GIB, layers=0), 4 * GIB, 1, Device.CPU),  # KV cache per token unknown
]


@pytest.mark.parametrize("model, budget, replicas, device", FITTING)
def test_three_options_fit_in_order(model, budget, replicas, device):
    options = context_options(model, budget, device, replicas)
    assert [o.kind for o in options] == ["most", "balanced", "fast"]
    sizes = [o.context_size for o in options]
    assert sizes == sorted(sizes, reverse=True), sizes
    floor = min(MIN_CONTEXT, model.trained_context or MIN_CONTEXT)
    for option in options:
        assert option.fits and option.memory_bytes <= budget, option
        assert option.memory_bytes == estimate(model, option.context_size, device).total_bytes * replicas
        assert option.context_size >= floor
        assert option.context_size <= (model.trained_context or option.context_size)
    share = budget // replicas
    # most: what the planner suggests for one replica's share (what an OOM failure suggests too)
    assert sizes[0] == suggested_context(model, largest_fitting_context(model, share, device))
    # balanced leaves headroom (unless it is at the floor), fast is small
    balanced = options[1]
    assert sizes[1] == floor or balanced.memory_bytes <= HEADROOM_FRACTION * budget + replicas
    assert sizes[1] <= max(floor, sizes[0] // 2)
    assert sizes[2] <= max(floor, FAST_CONTEXT)


def test_a_roomy_node_gets_three_different_sizes():
    sizes = [o.context_size for o in context_options(facts(1 * GIB), 64 * GIB)]
    assert sizes[0] > sizes[1] > sizes[2], sizes
    assert sizes == [32768, 16384, 2048]


@pytest.mark.parametrize("model, budget", [(facts(8 * GIB), 4 * GIB), (facts(1 * GIB, layers=400), 1500 * MIB)])
def test_no_options_when_nothing_useful_fits(model, budget):
    assert context_options(model, budget) == []


def test_replicas_share_the_budget():
    one = context_options(facts(1 * GIB), 8 * GIB, replicas=1)
    two = context_options(facts(1 * GIB), 8 * GIB, replicas=2)
    assert two[0].context_size < one[0].context_size
    assert "2 replicas" in two[0].description


# ---- the route -------------------------------------------------------------------------------------


@pytest.fixture
def http(tmp_path, monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "640MiB")
    app = create_app(Settings.from_env({"BERTH_HOME": str(tmp_path)}), token="t")
    with TestClient(app, raise_server_exceptions=False, headers={"Authorization": "Bearer t"}) as client:
        yield client


def test_plan_of_a_real_model_answers_three_fitting_options(http, tiny_gguf):
    answer = http.post("/v1/plan", json={"model": str(tiny_gguf)})
    assert answer.status_code == 200, answer.text
    plan = answer.json()
    assert plan["known"] and plan["fits"] and plan["engine"] == "llamacpp"
    assert plan["engine_reasons"] and "640.0 MiB" in plan["budget"] or "640 MiB" in plan["budget"]
    assert [o["kind"] for o in plan["options"]] == ["most", "balanced", "fast"]
    sizes = [o["context_size"] for o in plan["options"]]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == plan["trained_context"] == 2048
    assert all(o["fits"] and o["memory_bytes"] <= plan["budget_bytes"] for o in plan["options"])


def test_a_context_that_cannot_fit_says_so_with_the_numbers(http, tiny_gguf):
    plan = http.post("/v1/plan", json={"model": str(tiny_gguf), "context_size": 1_048_576}).json()
    assert plan["fits"] is False and plan["memory_bytes"] > plan["budget_bytes"]
    assert "does not fit with context size 1048576" in plan["message"]
    assert "GiB" in plan["message"] and "MiB" in plan["message"]  # the estimate and the budget
    assert "The largest context size that fits is" in plan["message"]
    assert plan["options"]  # smaller contexts still fit


def test_a_model_that_cannot_fit_at_all_says_so(http, tiny_gguf, monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1MiB")
    plan = http.post("/v1/plan", json={"model": str(tiny_gguf), "replicas": 2}).json()
    assert plan["known"] and plan["fits"] is False and plan["options"] == []
    assert "does not fit even with a 512-token context" in plan["message"]
    assert "Choose a smaller variant" in plan["message"] and "2 replicas share" in plan["message"]


def test_plan_refuses_or_explains_what_it_cannot_read(http, garbage_gguf, tmp_path):
    unreadable = http.post("/v1/plan", json={"model": str(garbage_gguf)}).json()
    assert unreadable["known"] is False and unreadable["fits"] is None and "cannot read" in unreadable["message"]
    remote = http.post("/v1/plan", json={"model": "hf:org/repo"}).json()
    assert remote["known"] is False and "fetched when it is deployed" in remote["message"]
    missing = http.post("/v1/plan", json={"model": str(tmp_path / "nothing.gguf")})
    assert missing.status_code == 400 and "does not exist" in missing.json()["error"]["message"]
    for bad in ({"model": ""}, {"model": "x", "replicas": 0}, {"model": "x", "context_size": 0}, {"model": "x", "extra": 1}):
        assert http.post("/v1/plan", json=bad).status_code == 400, bad
    assert http.post("/v1/plan", json={"model": "x"}, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_plan_is_in_the_schema_with_its_codes(http):
    operation = http.get("/openapi.json").json()["paths"]["/v1/plan"]["post"]
    assert {"200", "400", "401", "413"} <= set(operation["responses"])
    assert "/ui/login" not in http.get("/openapi.json").json()["paths"]
