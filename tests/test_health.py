import anyio
import httpx

from service.app import create_app


def test_healthz_answers_ok() -> None:
    """Liveness needs nothing loaded: it answers even before the lifespan has run."""

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.get("/healthz")

    response = anyio.run(get)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
