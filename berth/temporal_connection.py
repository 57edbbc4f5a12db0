"""One way to reach Temporal, for the worker, the API and the tests: pydantic payloads everywhere."""

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from berth.settings import NAMESPACE, Settings


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address, namespace=NAMESPACE, data_converter=pydantic_data_converter
    )
