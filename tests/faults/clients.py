"""The HTTP side of a fault test: the APIs of a stack, the mock's journal, and readiness."""

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.faults.stack import FaultStack
from tests.helpers import ApiClient, MockClient, eventually


class MockProbe(MockClient):
    """The mock's journal, including when each token left (for the stop tests)."""

    async def emissions(self, contains: str) -> list[dict[str, Any]]:
        response = await self.http.get("/_mock/emissions", params={"contains": contains})
        assert response.status_code == 200, response.text
        records: list[dict[str, Any]] = response.json()
        return records

    async def models_asked(self, contains: str) -> list[str]:
        """The model name of each request for `contains`: which responder asked, in order."""
        return [record["model"] for record in await self.requests(contains)]


@contextlib.asynccontextmanager
async def clients(stack: FaultStack) -> AsyncIterator[tuple[list[ApiClient], MockProbe]]:
    """A client for each running API of the stack, and one for the mock."""
    async with contextlib.AsyncExitStack() as exits:
        apis = []
        for url in stack.api_urls:
            http = await exits.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30.0))
            apis.append(ApiClient(http))
        mock_http = await exits.enter_async_context(
            httpx.AsyncClient(base_url=stack.mock_url, timeout=10.0)
        )
        yield apis, MockProbe(mock_http)


async def readiness(api: ApiClient) -> int:
    """/readyz's status code, 0 if the API does not answer."""
    try:
        return (await api.http.get("/readyz", timeout=10.0)).status_code
    except httpx.HTTPError:
        return 0


async def readiness_is(apis: list[ApiClient], status: int, timeout: float) -> None:
    """Wait until every API's /readyz answers `status`."""
    for api in apis:

        async def answers(api: ApiClient = api) -> bool:
            return await readiness(api) == status

        await eventually(answers, timeout, 0.2, f"/readyz of {api.base_url} to say {status}")


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"
