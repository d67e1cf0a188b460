"""Hostile and odd images through the whole app (in-process): a clear 4xx or a correct result each."""

from __future__ import annotations

import pytest
from hostile_images import Hostile, cases
from service_support import decoded, make_settings, served

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(anyio_backend: str):
    async with served(make_settings(max_input_pixels=1 << 20)) as (_, client):
        yield client


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
async def test_hostile_input_gets_a_clear_answer(client, case: Hostile) -> None:
    headers = {"content-type": case.content_type} if case.content_type else {}
    response = await client.post(f"/upscale?{case.query}", content=case.body, headers=headers)
    assert response.status_code == case.status, response.text
    if case.status == 200:
        assert decoded(response.content).size == case.size
    else:
        assert response.json()["code"] == case.code
    assert (await client.get("/healthz")).status_code == 200
