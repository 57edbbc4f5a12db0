"""Sealed env values (berth.common.sealing), the API's masking and sealing of them
(berth.api.facade.env_secrets) and the node's opening (berth.node.engine_launch.with_env_opened):
pure logic and files, no stack. The whole way through a real stack: tests/test_secrets_e2e.py."""

import base64
import os
import stat

import pytest
from temporalio.exceptions import ApplicationError

from berth.api.facade.env_secrets import MASK, Sealer, masked, refuse_masks
from berth.api.facade.errors import BadRequest, describe_problem
from berth.common.sealing import (
    KEY_ENV,
    NONCE_BYTES,
    SEALED_PREFIX,
    SealError,
    SealingKey,
    ensure_key,
    is_sealed,
    key_path,
    load_key,
    open_env,
    seal_env,
)
from berth.domain.pipeline import LaunchRequest
from berth.domain.spec import DeploymentSpec, SpecPatch
from berth.domain.state import DeploymentState
from berth.node.engine_launch import with_env_opened
from berth.settings import Settings

SECRET = "hf_" + "s3cr3t" * 6
KEY = SealingKey("k" * 40)
OTHER_KEY = SealingKey("o" * 40)


def settings_in(tmp_path) -> Settings:
    return Settings.from_env({"BERTH_HOME": str(tmp_path / "home")})


def _raw(sealed: str) -> bytes:
    return base64.urlsafe_b64decode(sealed.rsplit(":", 1)[1])


def test_a_sealed_value_opens_as_itself_and_shows_nothing_of_it():
    sealed = KEY.seal("qwen", "HF_TOKEN", SECRET)
    assert is_sealed(sealed) and sealed.startswith(f"{SEALED_PREFIX}{KEY.id}:")
    assert SECRET not in sealed and SECRET.encode() not in _raw(sealed)
    assert KEY.open("qwen", "HF_TOKEN", sealed) == SECRET
    assert KEY.open("qwen", "EMPTY", KEY.seal("qwen", "EMPTY", "")) == ""
    assert KEY.open("qwen", "U", KEY.seal("qwen", "U", "ünïcödé ✓")) == "ünïcödé ✓"


def test_nonces_are_random_so_one_value_sealed_twice_differs():
    blobs = [KEY.seal("qwen", "HF_TOKEN", SECRET) for _ in range(50)]
    assert len(set(blobs)) == 50
    assert len({_raw(blob)[:NONCE_BYTES] for blob in blobs}) == 50


def test_the_key_is_nowhere_in_a_sealed_value():
    secret = "my-operator-secret-" + "x" * 20
    key = SealingKey(secret)
    sealed = key.seal("qwen", "HF_TOKEN", SECRET)
    assert secret not in sealed and secret.encode() not in _raw(sealed)
    # the key id is a hash of the secret, not a key: used as a key, it opens nothing
    with pytest.raises(SealError):
        SealingKey(key.id * 8).open("qwen", "HF_TOKEN", sealed)


@pytest.mark.parametrize(
    "opener, deployment, name, damage, says",
    [
        (OTHER_KEY, "qwen", "HF_TOKEN", None, "another secret key"),
        (KEY, "other", "HF_TOKEN", None, "does not open"),  # moved to another deployment
        (KEY, "qwen", "OTHER_VAR", None, "does not open"),  # moved to another variable
        (KEY, "qwen", "HF_TOKEN", lambda s: s[:-4] + ("AAAA" if not s.endswith("AAAA") else "BBBB"), "does not open"),
        (KEY, "qwen", "HF_TOKEN", lambda s: s[: len(SEALED_PREFIX) + 12], "does not open"),  # truncated
        (KEY, "qwen", "HF_TOKEN", lambda s: s + "!!", "does not open"),  # not base64
    ],
)
def test_a_sealed_value_opens_only_with_its_key_deployment_and_variable(opener, deployment, name, damage, says):
    sealed = KEY.seal("qwen", "HF_TOKEN", SECRET)
    if damage:
        sealed = damage(sealed)
    with pytest.raises(SealError) as refused:
        opener.open(deployment, name, sealed)
    assert says in str(refused.value) and name in str(refused.value)
    assert SECRET not in str(refused.value) and sealed not in str(refused.value)


def test_open_env_passes_clear_values_and_names_what_it_cannot_open():
    env = {"PLAIN": "as-is", **seal_env(KEY, "qwen", {"HF_TOKEN": SECRET})}
    assert open_env(KEY, "qwen", env) == {"PLAIN": "as-is", "HF_TOKEN": SECRET}
    assert open_env(None, "qwen", {"PLAIN": "as-is"}) == {"PLAIN": "as-is"}
    with pytest.raises(SealError, match="HF_TOKEN is sealed, but this node has no secret key"):
        open_env(None, "qwen", env)
    # a value the API took in clear that looks sealed is sealed again, and opens as it was given
    looks_sealed = f"{SEALED_PREFIX}whatever"
    assert open_env(KEY, "qwen", seal_env(KEY, "qwen", {"V": looks_sealed})) == {"V": looks_sealed}


def test_ensure_key_creates_one_private_file_once_and_the_env_variable_wins(tmp_path):
    settings = settings_in(tmp_path)
    assert load_key(settings, {}) is None
    first = ensure_key(settings, {})
    mode = stat.S_IMODE(os.stat(key_path(settings)).st_mode)
    assert mode == 0o600, oct(mode)
    assert ensure_key(settings, {}).id == first.id == load_key(settings, {}).id
    shared = "s" * 48
    assert load_key(settings, {KEY_ENV: shared}).id == SealingKey(shared).id != first.id
    assert [p.name for p in key_path(settings).parent.iterdir() if p.name.startswith(".secret-key")] == []


@pytest.mark.parametrize("weak", ["short", " " * 40 + "x", "x" * 31])
def test_a_short_shared_key_is_refused_with_the_way_out(weak):
    with pytest.raises(SealError, match="at least 32"):
        SealingKey(weak)


# ---- the API: sealed on the way in, masked on the way out ------------------------------------------


def test_the_api_seals_a_specs_env_and_a_patchs_env(tmp_path):
    sealer = Sealer(settings_in(tmp_path))
    spec = DeploymentSpec(name="qwen", model="/m.gguf", env={"HF_TOKEN": SECRET, "OMP_NUM_THREADS": "2"})
    sealed = sealer.spec(spec)
    assert set(sealed.env) == {"HF_TOKEN", "OMP_NUM_THREADS"}
    assert all(is_sealed(value) for value in sealed.env.values()) and SECRET not in sealed.model_dump_json()
    assert open_env(sealer.key(), "qwen", sealed.env) == spec.env
    patch = sealer.patch("qwen", SpecPatch(env={"HF_TOKEN": "new-" + SECRET}))
    assert is_sealed(patch.env["HF_TOKEN"]) and "env" in patch.model_dump(exclude_unset=True)
    assert sealer.patch("qwen", SpecPatch(context_size=64)).model_dump(exclude_unset=True) == {"context_size": 64}
    assert sealer.spec(DeploymentSpec(name="qwen", model="/m.gguf")).env == {}


def test_the_api_masks_every_value_and_refuses_the_mask_back(tmp_path):
    spec = DeploymentSpec(name="qwen", model="/m.gguf", env={"HF_TOKEN": SECRET, "A": "b"})
    shown = masked(DeploymentState(spec=spec))
    assert shown.spec.env == {"HF_TOKEN": MASK, "A": MASK}
    assert SECRET not in shown.model_dump_json()
    with pytest.raises(BadRequest, match="HF_TOKEN"):
        refuse_masks({"HF_TOKEN": MASK})
    with pytest.raises(BadRequest):
        Sealer(settings_in(tmp_path)).spec(shown.spec)


def test_a_validation_message_never_echoes_an_env_value():
    error = {"type": "string_type", "msg": "Input should be a valid string", "input": 12345678}
    assert "12345678" not in describe_problem(error, "env.HF_TOKEN")
    assert "12345678" in describe_problem(error, "model")


# ---- the node: opened inside the launch ---------------------------------------------------------------


def _request(env: dict[str, str]) -> LaunchRequest:
    return LaunchRequest(instance_id="qwen-1", deployment="qwen", engine="llamacpp", model_path="/m", port=1, env=env)


def test_the_node_opens_sealed_values_with_its_key(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    settings = settings_in(tmp_path)
    key = ensure_key(settings, {})
    request = _request({"PLAIN": "x", "HF_TOKEN": key.seal("qwen", "HF_TOKEN", SECRET)})
    assert with_env_opened(settings, request).env == {"PLAIN": "x", "HF_TOKEN": SECRET}
    plain = _request({"PLAIN": "x"})
    assert with_env_opened(settings, plain) is plain


@pytest.mark.parametrize("has_key", [False, True])
def test_a_sealed_value_the_node_cannot_open_is_engine_unavailable(tmp_path, monkeypatch, has_key):
    monkeypatch.delenv(KEY_ENV, raising=False)
    settings = settings_in(tmp_path)
    if has_key:
        ensure_key(settings, {})
    request = _request({"HF_TOKEN": OTHER_KEY.seal("qwen", "HF_TOKEN", SECRET)})
    with pytest.raises(ApplicationError) as refused:
        with_env_opened(settings, request)
    assert refused.value.type == "ENGINE_UNAVAILABLE" and refused.value.non_retryable
    assert "HF_TOKEN" in refused.value.message and SECRET not in refused.value.message


def test_berth_status_prints_env_names_and_no_value():
    from berth.api.cli_output import state_text

    spec = DeploymentSpec(name="qwen", model="/m.gguf", env={"HF_TOKEN": SECRET, "A": "b"})
    text = state_text(masked(DeploymentState(spec=spec)).model_dump(mode="json"))
    assert "A, HF_TOKEN (values hidden)" in text and SECRET not in text
