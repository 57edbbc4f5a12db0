"""berth's Temporal data converter: the SDK's pydantic one, with one cache of pydantic TypeAdapters
for the whole process.

The SDK makes a payload converter for every workflow instance (from the converter class), and
each PydanticJSONPlainPayloadConverter keeps a TypeAdapter cache of its own: counted in the
worker with 120 deployments, every cached workflow held 7 adapters (EngineHandle,
DeploymentInput, PreparedModel, EngineOutcome, int, str, Any), each built anew (CPU at every
workflow start or replay) and walked by every full garbage collection for as long as the
workflow stays cached. Here every instance uses the same cache; a TypeAdapter is stateless.
"""

import functools

from pydantic import TypeAdapter
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter, PydanticPayloadConverter
from temporalio.converter import DataConverter

# as large as the SDK's own per-instance default: berth converts a few dozen types in all
SHARED_TYPE_ADAPTERS = functools.lru_cache(maxsize=1024)(TypeAdapter)


class SharedAdaptersPayloadConverter(PydanticPayloadConverter):
    def __init__(self) -> None:
        super().__init__()
        for converter in self.converters.values():
            if isinstance(converter, PydanticJSONPlainPayloadConverter):
                # the SDK's converter looks its adapters up through this attribute (temporalio 1.x;
                # tests/test_payload_converter.py fails if that changes)
                converter._type_adapter = SHARED_TYPE_ADAPTERS


berth_data_converter = DataConverter(payload_converter_class=SharedAdaptersPayloadConverter)
