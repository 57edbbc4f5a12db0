"""`python -m berth.api.server`: the REST API on 127.0.0.1:$BERTH_API_PORT (what `berth up` runs)."""

import logging

import httpx

from berth.settings import Settings

API_HOST = "127.0.0.1"


def api_url(settings: Settings) -> str:
    return settings.api_url


def api_ready(settings: Settings) -> bool:
    try:
        return httpx.get(f"{api_url(settings)}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    import uvicorn

    from berth.api.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s api %(levelname)s %(name)s %(message)s")
    settings = Settings.from_env()
    settings.ensure_dirs()
    uvicorn.run(
        create_app(settings),
        host=API_HOST,
        port=settings.api_port,
        log_level="info",
        server_header=False,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
