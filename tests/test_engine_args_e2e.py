"""engine_args on the default install (the xllamacpp launcher) reach the engine; a spec started
straight through Temporal (no API) with what the API refuses is refused by the workflow before launch
(tests/test_secrets_e2e.py starts one from the Temporal CLI itself)."""

import httpx

from berth.domain.errors import ErrorCode
from berth.domain.spec import DeploymentSpec
from berth.domain.status import DeploymentStatus
from berth.testing.harness import engine_processes, start_deployment, wait_for_api_status, wait_for_status

USER_ARGS = ["--n-gpu-layers", "0", "--flash-attn", "off", "--parallel", "2", "--cache-type-k", "f16",
             "--batch-size", "256", "--threads", "1", "--temp", "0.25", "--seed", "7"]


async def test_engine_args_users_need_deploy_and_reach_the_engine(stack, api, tiny_gguf, name):
    spec = {"name": name, "model": str(tiny_gguf), "context_size": 512, "engine_args": USER_ARGS}
    accepted = api.post("/v1/deployments", json=spec)
    assert accepted.status_code == 202, accepted.text
    state = wait_for_api_status(api, name, {"DEPLOYED", "FAILED"}, timeout_s=60)
    assert state["status"] == "DEPLOYED", state["error"]
    props = httpx.get(f"http://127.0.0.1:{state['instances'][0]['port']}/props", timeout=10).json()
    assert props["total_slots"] == 2  # --parallel 2
    assert props["default_generation_settings"]["n_ctx"] == 256  # 512 shared by 2 slots
    assert props["default_generation_settings"]["params"]["seed"] == 7
    assert props["default_generation_settings"]["params"]["temperature"] == 0.25
    assert props["model_alias"] == name  # berth's --alias, after the user's flags
    with open(state["instances"][0]["log_path"], encoding="utf-8", errors="replace") as log:
        text = log.read()
    assert "n_threads = 1" in text and "n_slots = 2" in text, text[-3000:]  # --threads 1, --parallel 2
    assert stack.chat(name).status_code == 200
    api.post(f"/v1/deployments/{name}/stop")
    wait_for_api_status(api, name, {"STOPPED"})


async def test_a_spec_started_through_temporal_is_refused_before_launch(stack, client, tiny_gguf, name):
    spec = DeploymentSpec(name=name, model=str(tiny_gguf), env={"LD_PRELOAD": "/tmp/evil.so"},
                          engine_args=["--host", "0.0.0.0"])
    await start_deployment(client, spec)
    state = await wait_for_status(client, name, DeploymentStatus.FAILED, timeout_s=60)
    assert state.error.code is ErrorCode.ENGINE_UNAVAILABLE
    assert "LD_PRELOAD" in state.error.message and "--host" in state.error.message
    assert not engine_processes(stack.home, name)
