"""One way to reach Temporal, for the worker, the API, `berth join` and the tests: pydantic payloads
everywhere (berth.common.payload_converter), the namespace, TLS and API key of
berth.common.temporal_options. The worker passes its own Runtime (its metrics exporter)."""

from datetime import timedelta

from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from berth.common.payload_converter import berth_data_converter
from berth.common.temporal_options import TemporalOptions, temporal_options
from berth.settings import Settings


def connect_arguments(options: TemporalOptions) -> dict:
    """Client.connect's keyword arguments for these options."""
    tls: bool | TLSConfig = False
    if options.tls:
        if options.server_root_ca_cert or options.client_cert or options.server_name:
            tls = TLSConfig(
                server_root_ca_cert=options.server_root_ca_cert,
                client_cert=options.client_cert,
                client_private_key=options.client_private_key,
                domain=options.server_name,
            )
        else:
            tls = True  # the system's CA roots
    return {"namespace": options.namespace, "tls": tls, "api_key": options.api_key}


async def connect(
    settings: Settings, runtime: Runtime | None = None, connect_timeout: timedelta | None = None
) -> Client:
    """A client; TemporalOptionsError (a ValueError) when an option cannot be used, RuntimeError
    when Temporal does not answer."""
    return await Client.connect(
        settings.temporal_address,
        data_converter=berth_data_converter,
        runtime=runtime,
        connect_timeout=connect_timeout,
        **connect_arguments(temporal_options(settings)),
    )
