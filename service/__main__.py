"""`python -m service`: serve the API with uvicorn on the configured host and port."""

import logging
import math

import uvicorn

from service.app import create_app
from service.lifecycle import DrainingServer
from service.settings import Settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout_s),
    )
    DrainingServer(config, app, settings.drain_seconds).run()


if __name__ == "__main__":
    main()
