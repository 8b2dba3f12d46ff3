"""Drive ``langchain-mcp-adapters`` against a server; run by test_langchain.py in its own environment.

    python _langchain_client.py MCP_URL TOKEN_ENDPOINT TITLE

Prints one JSON object: what the read-only client listed, called and was told on a refused write,
what the full client (auth by the token provider's ``httpx.Auth``) wrote, and what a bad token
reads. ``auth`` comes from the repository through PYTHONPATH (its dependencies are installed in
that environment; ``mcp`` there is 1.x).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx
from langchain_mcp_adapters.client import MultiServerMCPClient

from auth.client import ClientCredentials, TokenProvider


def leaves(exc: BaseException) -> list[dict[str, str]]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [{"type": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(exc)}]


def token(endpoint: str, client_id: str) -> str:
    r = httpx.post(endpoint, data={"grant_type": "client_credentials"}, auth=(client_id, f"{client_id}-secret"))
    r.raise_for_status()
    return str(r.json()["access_token"])


def server(url: str, **auth: Any) -> MultiServerMCPClient:
    return MultiServerMCPClient({"notes": {"transport": "streamable_http", "url": url, **auth}})


async def main(url: str, endpoint: str, title: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    reader = server(url, headers={"Authorization": f"Bearer {token(endpoint, 'dev-read')}"})
    tools = {t.name: t for t in await reader.get_tools()}
    out["read_tools"] = sorted(tools)
    out["read_call"] = await tools["list_notes"].ainvoke({"limit": 3})
    try:
        async with reader.session("notes") as session:
            await session.call_tool("create_note", {"title": title, "body": "b"})
        out["refusal"] = None
    except BaseException as exc:  # noqa: BLE001 - recording what the user gets
        out["refusal"] = leaves(exc)

    creds = ClientCredentials(client_id="dev-full", client_secret="dev-full-secret", token_endpoint=endpoint)
    async with TokenProvider(creds) as provider:
        writer = server(url, auth=provider.httpx_auth())
        tools = {t.name: t for t in await writer.get_tools()}
        out["full_tools"] = sorted(tools)
        out["full_call"] = await tools["create_note"].ainvoke({"title": title + "-full", "body": "b"})

    try:
        await server(url, headers={"Authorization": "Bearer not.a.token"}).get_tools()
        out["bad_token"] = None
    except BaseException as exc:  # noqa: BLE001
        out["bad_token"] = leaves(exc)
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:4])), default=str))
