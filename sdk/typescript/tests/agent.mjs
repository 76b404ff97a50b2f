// An agent using @mandate/sdk, driven by the tests one JSON line at a time
// on stdin, answering one JSON line each on stdout. MANDATE_TS_SDK: the
// package's entry (the built dist/index.js, or the packed and installed
// one); MANDATE_NODE_DIR: where @modelcontextprotocol/sdk is installed.
import { createRequire } from "node:module";
import path from "node:path";
import readline from "node:readline";

const sdk = await import(process.env.MANDATE_TS_SDK);
const { Mandate, RunKey, MandateError, mandateFetch, mcpFetch } = sdk;
const require = createRequire(path.join(process.env.MANDATE_NODE_DIR, "package.json"));

let m;
const keys = {};
const others = {};

async function op(cmd) {
  switch (cmd.op) {
    case "from_env":
      m = Mandate.fromEnv();
      return String(m);
    case "join":
      m = await Mandate.join(cmd.broker, cmd.token, { tenant: cmd.tenant, agent: cmd.agent, principal: cmd.principal, grant: cmd.grant, alg: cmd.alg, tools: cmd.tools });
      return await m.identity();
    case "key":
      keys[cmd.name] = await RunKey.generate(cmd.alg ?? "EdDSA");
      return await keys[cmd.name].thumbprint();
    case "proof":
      return { proof: await keys[cmd.key].proof(cmd.method, cmd.url, { accessToken: cmd.access_token, nonce: cmd.nonce }), jwk: keys[cmd.key].jwk };
    case "from_mandate":
      m = Mandate.fromMandate(cmd.broker, cmd.mandate, keys[cmd.key]);
      return String(m);
    case "socket": {
      // A raw request to the wrapper's socket, as any child process could make.
      const { unix } = await import(process.env.MANDATE_TS_SDK.replace(/index\.js$/, "http.js"));
      const a = await unix(process.env.MANDATE_AGENT_SOCK, "POST", cmd.path, cmd.body);
      return { status: a.status, body: a.body };
    }
    case "end":
      await m.end();
      return null;
    case "identity":
      return await m.identity();
    case "credential": {
      const c = await (others[cmd.who] ?? m).credential(cmd.tool, { actions: cmd.actions, details: cmd.details, fresh: cmd.fresh, wait: cmd.wait });
      return { token: c.accessToken, token_type: c.tokenType, expires_at: c.expiresAt, shown: JSON.stringify(c) + String(c) + (await import("node:util")).inspect(c) };
    }
    case "attenuate":
      return await m.attenuate(cmd.to, { only: cmd.only, ttlSecs: cmd.ttl_secs });
    case "delegate": {
      const child = await m.delegate(cmd.agent, { capabilities: cmd.capabilities, ttlSecs: cmd.ttl_secs });
      if (cmd.as) others[cmd.as] = child; // the parent stays `m`
      else m = child;
      return await child.identity();
    }
    case "call": {
      const f = mandateFetch(m, { tool: cmd.tool });
      const r = await f(cmd.url, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json, text/event-stream" },
        body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/call", params: { name: cmd.name, arguments: cmd.arguments } }),
        redirect: cmd.follow ? "follow" : "manual",
      });
      const text = await r.text();
      let body;
      try { body = JSON.parse(text); } catch { body = text; }
      return { status: r.status, body };
    }
    case "mcp": {
      const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
      const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");
      const transport = new StreamableHTTPClientTransport(new URL(cmd.url), { fetch: mcpFetch(m, cmd.tool) });
      const client = new Client({ name: "sdk-agent", version: "1.0.0" });
      await client.connect(transport);
      const listed = (await client.listTools()).tools.map((t) => t.name).sort();
      const r = await client.callTool({ name: cmd.name, arguments: cmd.arguments });
      await client.close();
      return { listed, text: r.content.filter((c) => c.type === "text").map((c) => c.text).join("") };
    }
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

for await (const line of readline.createInterface({ input: process.stdin })) {
  const cmd = JSON.parse(line);
  let out;
  try {
    out = { ok: await op(cmd) };
  } catch (e) {
    if (!(e instanceof MandateError)) throw e;
    out = { error: e.constructor.name, code: e.code, description: e.description, text: String(e), approval_id: e.approvalId ?? null, stack: e.stack };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}
