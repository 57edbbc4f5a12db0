"""berth's data converter: pydantic payloads as the SDK's converter makes them, one TypeAdapter cache
for every converter instance (the SDK makes one per workflow instance)."""

from temporalio.contrib.pydantic import pydantic_data_converter

from berth.domain.pipeline import EngineHandle, EngineOutcome
from berth.common.payload_converter import SHARED_TYPE_ADAPTERS, SharedAdaptersPayloadConverter, berth_data_converter

HANDLE = EngineHandle(
    instance_id="d-1", deployment="d", engine="llamacpp", port=30001, pid=42, log_path="/l", started_at=1.0
)


def test_two_converter_instances_share_one_type_adapter_per_type():
    first, second = SharedAdaptersPayloadConverter(), SharedAdaptersPayloadConverter()
    [payload] = first.to_payloads([HANDLE])
    assert first.from_payloads([payload], [EngineHandle]) == [HANDLE]
    built = SHARED_TYPE_ADAPTERS.cache_info()
    assert second.from_payloads([payload], [EngineHandle]) == [HANDLE]
    after = SHARED_TYPE_ADAPTERS.cache_info()
    assert after.currsize == built.currsize, "no new adapter for the second instance"
    assert after.hits == built.hits + 1, "the second instance found the first one's adapter"


def test_payloads_are_the_sdk_pydantic_converters_both_ways():
    outcome = EngineOutcome(ready=True)
    ours = berth_data_converter.payload_converter.to_payloads([HANDLE, outcome, 7, "x"])
    sdk = pydantic_data_converter.payload_converter.to_payloads([HANDLE, outcome, 7, "x"])
    assert [(p.metadata, p.data) for p in ours] == [(p.metadata, p.data) for p in sdk]
    back = pydantic_data_converter.payload_converter.from_payloads(ours, [EngineHandle, EngineOutcome, int, str])
    assert back == [HANDLE, outcome, 7, "x"]
