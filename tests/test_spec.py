"""DeploymentSpec and SpecPatch: bad input is refused with a message that says what to change."""

import re

import pytest
from pydantic import ValidationError

from berth.domain.spec import DeploymentSpec, RestartPolicy, SpecPatch, same_instances


@pytest.mark.parametrize("name", ["a", "qwen-small", "m0", "x" * 63, "9lives"])
def test_good_names(name):
    assert DeploymentSpec(name=name, model="m.gguf").name == name


@pytest.mark.parametrize(
    "name",
    ["", "Upper", "has.dot", "has/slash", "back`tick", "-lead", "trail-", "x" * 64, "sp ace", "under_score"],
)
def test_bad_names_are_refused_with_advice(name):
    with pytest.raises(ValidationError) as refused:
        DeploymentSpec(name=name, model="m.gguf")
    assert "DNS label" in str(refused.value)


@pytest.mark.parametrize(
    "fields",
    [
        {"engine": "tensorrt"},
        {"context_size": 0},
        {"context_size": -1},
        {"context_size": 10**9},
        {"startup_timeout_s": 0},
        {"unknown_field": 1},
        {"env": {"1BAD": "x"}},
        {"model": ""},
        {"restart": {"max_attempts": -1}},
    ],
)
def test_bad_fields_are_refused(fields):
    with pytest.raises(ValidationError):
        DeploymentSpec.model_validate({"name": "ok", "model": "m.gguf", **fields})


def test_patch_changes_only_what_it_names():
    spec = DeploymentSpec(name="ok", model="m.gguf", context_size=4096, env={"A": "1"})
    patched = spec.patched(SpecPatch(context_size=1024))
    assert patched.context_size == 1024
    assert patched.env == {"A": "1"} and patched.model == "m.gguf" and patched.name == "ok"


def test_patch_cannot_rename_and_is_validated():
    with pytest.raises(ValidationError):
        SpecPatch.model_validate({"name": "other"})
    with pytest.raises(ValidationError):
        SpecPatch.model_validate({"context_size": -5})


def test_backoff_doubles_up_to_the_cap():
    policy = RestartPolicy(backoff_initial_s=1, backoff_max_s=60)
    # the first automatic restart is immediate, then the backoff doubles from backoff_initial_s
    assert [policy.backoff_s(n) for n in range(1, 9)] == [0, 1, 2, 4, 8, 16, 32, 60]


@pytest.mark.parametrize(
    "model, says",
    [
        ("https://host.example/", "does not end with a file name"),
        ("hf:org/repo@", "empty revision"),
        ("https://h.example/q.gguf#sha256=abc", "#sha256=<64 hex digits>"),
    ],
)
def test_a_malformed_url_or_hub_reference_is_refused_with_the_spec(model, says):
    with pytest.raises(ValidationError, match=re.escape(says)):
        DeploymentSpec(name="m", model=model)
    with pytest.raises(ValidationError, match=re.escape(says)):
        DeploymentSpec(name="m", model="/m.gguf").patched(SpecPatch(model=model))
    assert DeploymentSpec(name="m", model="hf:org/repo@v1:m.gguf").model == "hf:org/repo@v1:m.gguf"


def test_drain_timeout_defaults_to_30_s_is_bounded_and_alone_needs_no_new_instances():
    spec = DeploymentSpec(name="d", model="/m.gguf")
    assert spec.drain_timeout_s == 30.0
    for bad in (-1, 3601):
        with pytest.raises(ValidationError, match="drain_timeout_s"):
            DeploymentSpec(name="d", model="/m.gguf", drain_timeout_s=bad)
    shorter = spec.patched(SpecPatch(drain_timeout_s=0))
    assert shorter.drain_timeout_s == 0 and same_instances(spec, shorter)
    assert same_instances(spec, spec.model_copy(update={"replicas": 3}))
    assert not same_instances(spec, spec.patched(SpecPatch(context_size=2048, drain_timeout_s=0)))
