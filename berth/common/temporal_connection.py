"""One way to reach Temporal, for the worker, the API and the tests: pydantic payloads everywhere
(berth.common.payload_converter). The worker passes its own Runtime (its metrics exporter)."""

from temporalio.client import Client
from temporalio.runtime import Runtime

from berth.common.payload_converter import berth_data_converter
from berth.settings import NAMESPACE, Settings


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    return await Client.connect(
        settings.temporal_address, namespace=NAMESPACE, data_converter=berth_data_converter, runtime=runtime
    )
