"""A spec's `env` values on their way through the API: sealed before they reach Temporal
(berth.common.sealing), masked in every state the API answers. Only the names are ever shown."""

from __future__ import annotations

from collections.abc import Mapping

from berth.api.facade.errors import BadRequest, Unavailable
from berth.common.sealing import SealError, SealingKey, ensure_key, seal_env
from berth.domain.spec import DeploymentSpec, SpecPatch
from berth.domain.state import DeploymentState
from berth.settings import Settings

# What the API shows in place of every env value.
MASK = "***"


class Sealer:
    """The API's sealing key, read (or created) on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._key: SealingKey | None = None

    def key(self) -> SealingKey:
        if self._key is None:
            try:
                self._key = ensure_key(self.settings)
            except (SealError, OSError) as error:
                raise Unavailable(f"the API cannot seal env values: {error}") from None
        return self._key

    def spec(self, spec: DeploymentSpec) -> DeploymentSpec:
        """The spec as it goes to Temporal: every env value sealed."""
        if not spec.env:
            return spec
        refuse_masks(spec.env)
        return spec.model_copy(update={"env": seal_env(self.key(), spec.name, spec.env)})

    def patch(self, name: str, patch: SpecPatch) -> SpecPatch:
        """A retry's patch as it goes to Temporal: its env (when it has one) sealed."""
        if not patch.env:
            return patch
        refuse_masks(patch.env)
        return patch.model_copy(update={"env": seal_env(self.key(), name, patch.env)})


def refuse_masks(env: Mapping[str, str]) -> None:
    """A value that is the mask came from a state the API showed: sending it back would set the
    variable to '***'. A 400, naming the variable."""
    masked = [name for name, value in env.items() if value == MASK]
    if masked:
        raise BadRequest(
            f"env {', '.join(masked)}: {MASK!r} is how berth shows a hidden value, not a value; "
            "send the value itself (or leave `env` out of a retry's patch to keep the values)"
        )


def masked(state: DeploymentState) -> DeploymentState:
    """The state as the API answers it: env names, never values."""
    if not state.spec.env:
        return state
    spec = state.spec.model_copy(update={"env": {name: MASK for name in state.spec.env}})
    return state.model_copy(update={"spec": spec})
