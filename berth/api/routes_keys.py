"""/v1/keys: inference keys, made, listed and revoked with the admin token (berth.api.inference_keys).
A key is shown once, in the answer that creates it; berth keeps only its hash."""

from typing import Annotated

from fastapi import APIRouter, Depends, Path, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from berth.api.dependencies import keys, require_token
from berth.api.errors import ERROR_RESPONSES, ApiError, ErrorBody
from berth.api.inference_keys import (
    MAX_NAME_CHARS,
    MAX_SCOPE,
    InvalidKeyRequest,
    KeyRecord,
    KeyStore,
    KeyStoreError,
    TooManyKeys,
    UnknownKey,
)
from berth.domain.spec import NAME_PATTERN

DAMAGED = {"model": ErrorBody, "description": "the keys file ($BERTH_HOME/inference-keys.json) cannot be read or written"}

router = APIRouter(
    prefix="/v1/keys",
    tags=["keys"],
    dependencies=[Depends(require_token)],
    responses={**{code: ERROR_RESPONSES[code] for code in (400, 401, 403)}, 503: DAMAGED},
)

Store = Annotated[KeyStore, Depends(keys)]
DeploymentName = Annotated[str, StringConstraints(pattern=NAME_PATTERN.pattern, max_length=63)]


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=MAX_NAME_CHARS, description="a label for people (`berth keys ls` shows it)")
    deployments: list[DeploymentName] | None = Field(
        None, min_length=1, max_length=MAX_SCOPE,
        description="the deployments whose model endpoints the key opens; left out: every deployment",
    )


class KeyInfo(BaseModel):
    id: str = Field(description="names the key: `berth keys revoke ID`")
    name: str
    deployments: list[str] | None = Field(description="the deployments it opens; null: every deployment")
    created: str = Field(description="when it was made (UTC, ISO 8601)")
    last4: str = Field(description="the key's last 4 characters, to tell keys apart")

    @classmethod
    def of(cls, record: KeyRecord) -> "KeyInfo":
        return cls(**record.public())


class CreatedKey(KeyInfo):
    key: str = Field(description="the key itself: shown this once, berth keeps only its SHA-256")


class KeyList(BaseModel):
    keys: list[KeyInfo]


def _refusal(error: Exception) -> ApiError:
    if isinstance(error, InvalidKeyRequest):
        return ApiError(400, "invalid_request", str(error))
    if isinstance(error, UnknownKey):
        return ApiError(404, "not_found", str(error.args[0]))
    if isinstance(error, TooManyKeys):
        return ApiError(409, "conflict", str(error))
    return ApiError(503, "unavailable", str(error))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CreatedKey,
    responses={
        409: {"model": ErrorBody, "description": "there are as many keys as berth keeps (1000): revoke some"},
        413: ERROR_RESPONSES[413],
    },
    summary="Make an inference key",
)
async def create_key(store: Store, request: KeyRequest | None = None) -> CreatedKey:
    """A key that opens the model endpoints of `deployments` (all of them when left out) through the
    gateway, and nothing of this API. The answer holds the key: it is not shown again."""
    request = request or KeyRequest()
    try:
        key, record = store.create(request.name, request.deployments)
    except (InvalidKeyRequest, TooManyKeys, KeyStoreError) as error:
        raise _refusal(error) from None
    return CreatedKey(key=key, **record.public())


@router.get("", response_model=KeyList, summary="List the inference keys (never the keys themselves)")
async def list_keys(store: Store) -> KeyList:
    try:
        return KeyList(keys=[KeyInfo.of(record) for record in store.records()])
    except KeyStoreError as error:
        raise _refusal(error) from None


@router.delete(
    "/{key_id}",
    response_model=KeyInfo,
    responses={404: {"model": ErrorBody, "description": "no inference key of that id"}},
    summary="Revoke an inference key",
)
async def revoke_key(
    store: Store, key_id: Annotated[str, Path(max_length=64, description="the key's id, as `berth keys ls` shows it")]
) -> KeyInfo:
    """The key stops opening anything at once: the gateway asks this API about it on every request."""
    try:
        return KeyInfo.of(store.revoke(key_id))
    except (UnknownKey, KeyStoreError) as error:
        raise _refusal(error) from None
