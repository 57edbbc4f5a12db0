"""`python -m berth.api.server`: the REST API on $BERTH_API_HOST:$BERTH_API_PORT, 127.0.0.1:8000 by
default (what `berth up` runs). In a container (docker-compose.yml) BERTH_API_HOST=0.0.0.0, so that
the port published on the host reaches it."""

import logging
import os
from collections.abc import Mapping

from berth.common.http_check import answers_ok
from berth.common.gc_pauses import freeze_start_up_objects
from berth.common.temporal_options import check_or_exit
from berth.settings import Settings

API_HOST = "127.0.0.1"
API_HOST_ENV = "BERTH_API_HOST"


def api_host(env: Mapping[str, str] = os.environ) -> str:
    """The address the API binds: BERTH_API_HOST, else loopback only."""
    return (env.get(API_HOST_ENV) or "").strip() or API_HOST


def api_url(settings: Settings) -> str:
    return settings.api_url


def api_ready(settings: Settings) -> bool:
    return answers_ok(f"{api_url(settings)}/healthz")


class PassedChecks(logging.Filter):
    """Leaves out of the access log the gateway's checks that passed (one per model request made
    with an inference key: Traefik's access log is the place for that traffic, and each line costs
    the check path ~0.1 ms); refused ones (401, 403) stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and args[4] == 200:
            return not str(args[2]).startswith("/v1/auth/check")
        return True


def main() -> None:
    import uvicorn

    from berth.api.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s api %(levelname)s %(name)s %(message)s")
    settings = Settings.from_env()
    check_or_exit(settings)  # a BERTH_TEMPORAL_* file missing: say so at start, not at the first request
    settings.ensure_dirs()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=api_host(),
        port=settings.api_port,
        log_level="info",
        server_header=False,
        timeout_graceful_shutdown=5,
    )  # configures uvicorn's loggers: the filter goes on after
    logging.getLogger("uvicorn.access").addFilter(PassedChecks())
    freeze_start_up_objects()
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
