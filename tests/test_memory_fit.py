"""A model that cannot fit fails before anything launches, with a context size that does fit."""

from berth.domain.errors import ErrorCode
from berth.domain.spec import DeploymentSpec
from berth.domain.status import DeploymentStatus as S
from berth.domain.temporal_names import workflow_id
from berth.testing.harness import engine_processes, start_deployment, wait_for_status


async def test_too_big_a_context_is_oom_before_launch_and_the_suggestion_deploys(stack, client, tiny_gguf, name):
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), context_size=1_048_576))
    state = await wait_for_status(client, name, {S.FAILED, S.DEPLOYED})
    assert state.status is S.FAILED
    assert state.error.code is ErrorCode.OOM
    assert S.INITIALIZING not in [t.status for t in state.transitions], "nothing may launch"
    assert not (stack.settings.logs_dir / f"{name}.log").exists(), "the engine was started"
    assert not engine_processes(stack.home, name)

    context = state.error.suggested_context_size
    assert context and 512 <= context < 1_048_576
    assert str(context) in state.error.guidance

    handle = client.get_workflow_handle(workflow_id(name))
    await handle.signal("retry", {"context_size": context})
    deployed = await wait_for_status(client, name, S.DEPLOYED, timeout_s=30)
    assert deployed.context_size == context == deployed.spec.context_size
    assert f"--ctx-size {context}" in " ".join(engine_processes(stack.home, name)[0].cmdline())
    await handle.signal("stop")
    await handle.result()
