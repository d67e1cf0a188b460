"""Assembles the FastAPI application from its routers."""

from fastapi import FastAPI


def create_app() -> FastAPI:
    """Build a fresh application (tests build their own instances)."""
    app = FastAPI(title="ElasticSR", version="0.1.0")

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    return app


app = create_app()
