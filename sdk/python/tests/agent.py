"""An agent using the SDK, driven by the tests one JSON line at a time on
stdin, answering one JSON line each on stdout. Started under `mandate exec`
(socket mode) or alone (standalone mode: the first command makes it join)."""
import asyncio
import json
import os
import sys

import httpx
import httpx2
import requests

import mandate
from mandate.auth import httpx2_auth, httpx_auth, requests_auth

m = None
keys = {}
others = {}


def call_body(name, arguments):
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


HEADERS = {"Accept": "application/json, text/event-stream"}


def op(cmd):
    global m
    kind = cmd["op"]
    if kind == "from_env":
        m = mandate.Mandate.from_env()
        return repr(m)
    if kind == "join":
        m = mandate.Mandate.join(cmd["broker"], cmd["token"], tenant=cmd["tenant"], agent=cmd["agent"],
                                 principal=cmd.get("principal"), grant=cmd.get("grant"), alg=cmd.get("alg", "EdDSA"))
        return m.identity()
    if kind == "key":
        keys[cmd["name"]] = mandate.RunKey.generate(cmd.get("alg", "EdDSA"))
        return keys[cmd["name"]].thumbprint
    if kind == "from_mandate":
        m = mandate.Mandate.from_mandate(cmd["broker"], cmd["mandate"], keys[cmd["key"]])
        return repr(m)
    if kind == "delegate":
        child = m.delegate(cmd["agent"], capabilities=cmd.get("capabilities"), ttl_secs=cmd.get("ttl_secs"))
        if cmd.get("as"):
            others[cmd["as"]] = child  # the parent stays `m`
        else:
            m = child
        return child.identity()
    if kind == "socket":
        # A raw request to the wrapper's socket, as any child process could make.
        from mandate import _http
        a = _http.unix(os.environ["MANDATE_AGENT_SOCK"], "POST", cmd["path"], cmd["body"])
        return {"status": a.status, "body": a.body}
    if kind == "end":
        return m.end()
    if kind == "identity":
        return m.identity()
    if kind == "credential":
        c = others.get(cmd.get("who"), m).credential(cmd["tool"], cmd.get("actions"), details=cmd.get("details"), fresh=cmd.get("fresh", False),
                         wait=cmd.get("wait"))
        return {"token": c.access_token, "token_type": c.token_type, "expires_at": c.expires_at,
                "repr": repr(c), "credential_id": c.credential_id}
    if kind == "acredential":
        c = asyncio.run(m.acredential(cmd["tool"], cmd.get("actions"), details=cmd.get("details"),
                                      wait=cmd.get("wait")))
        return {"token": c.access_token}
    if kind == "attenuate":
        return m.attenuate(cmd["to"], only=cmd.get("only"), ttl_secs=cmd.get("ttl_secs"))
    if kind == "call":
        # One JSON-RPC tools/call to the MCP gateway through each HTTP library's auth.
        body, lib = call_body(cmd["name"], cmd["arguments"]), cmd["lib"]
        if lib == "httpx":
            with httpx.Client(auth=httpx_auth(m, cmd.get("tool")), follow_redirects=cmd.get("follow", False)) as c:
                r = c.post(cmd["url"], json=body, headers=HEADERS)
        elif lib == "httpx-async":
            async def go():
                async with httpx.AsyncClient(auth=httpx_auth(m, cmd.get("tool"))) as c:
                    return await c.post(cmd["url"], json=body, headers=HEADERS)
            r = asyncio.run(go())
        elif lib == "httpx2":
            with httpx2.Client(auth=httpx2_auth(m, cmd.get("tool"))) as c:
                r = c.post(cmd["url"], json=body, headers=HEADERS)
        else:
            r = requests.post(cmd["url"], json=body, headers=HEADERS, auth=requests_auth(m, cmd.get("tool")), timeout=10)
        try:
            answer = r.json()
        except ValueError:
            answer = r.text
        return {"status": r.status_code, "body": answer, "retried": len(getattr(r, "history", []) or [])}
    if kind == "mcp":
        from mandate.mcp import client_auth
        from mcp.client import Client
        from mcp.client.streamable_http import streamable_http_client

        async def session():
            async with httpx2.AsyncClient(auth=client_auth(m, cmd["tool"])) as http_client:
                async with Client(streamable_http_client(cmd["url"], http_client=http_client)) as client:
                    listed = sorted(t.name for t in (await client.list_tools()).tools)
                    r = await client.call_tool(cmd["name"], cmd["arguments"])
                    return {"listed": listed, "text": "".join(getattr(c, "text", "") for c in r.content)}
        return asyncio.run(session())
    if kind in ("langchain", "openai"):
        return framework_call(kind, cmd["arguments"])
    raise ValueError(kind)


def transfer_claims(amount, to):
    """What the guarded tool does with its credential: here, shows which it got."""
    import base64
    c = mandate.current_credential()
    claims = json.loads(base64.urlsafe_b64decode(c.access_token.split(".")[1] + "=="))
    return json.dumps({"to": to, "scope": claims["scope"], "aud": claims["aud"],
                       "details": claims.get("authorization_details")})


def framework_call(kind, arguments):
    """A tool call through the framework's own tool-calling API (no model)."""
    def details(amount, to):
        return {"amount": amount, "currency": "EUR", "target": to}

    if kind == "langchain":
        from mandate.langchain import mandate_tool

        @mandate_tool(m, "bank", "transfer", details=details)
        def transfer(amount: int, to: str) -> str:
            """Transfer `amount` euro cents to `to`."""
            return transfer_claims(amount, to)
        assert sorted(transfer.args) == ["amount", "to"], transfer.args
        call = {"name": "transfer", "args": arguments, "id": "call_1", "type": "tool_call"}
        return transfer.invoke(call).content

    from agents.tool_context import ToolContext
    from mandate.openai_agents import mandate_function_tool

    @mandate_function_tool(m, "bank", "transfer", details=details)
    def transfer(amount: int, to: str) -> str:
        """Transfer `amount` euro cents to `to`."""
        return transfer_claims(amount, to)
    assert sorted(transfer.params_json_schema["properties"]) == ["amount", "to"], transfer.params_json_schema
    raw = json.dumps(arguments)
    ctx = ToolContext(context=None, tool_name=transfer.name, tool_call_id="call_1", tool_arguments=raw)
    return asyncio.run(transfer.on_invoke_tool(ctx, raw))


for line in sys.stdin:
    cmd = json.loads(line)
    try:
        out = {"ok": op(cmd)}
    except mandate.MandateError as e:
        out = {"error": type(e).__name__, "code": e.code, "description": e.description, "text": str(e),
               "approval_id": getattr(e, "approval_id", None)}
    print(json.dumps(out), flush=True)
