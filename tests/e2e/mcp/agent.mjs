// An MCP client from the official TypeScript SDK (@modelcontextprotocol/sdk)
// talking to Mandate's MCP gateway with a bearer credential: lists the
// tools, pays 50 (allowed) and 5000 (refused by policy), and prints what it
// got as JSON. Usage: node agent.mjs URL TOKEN (NODE_PATH: the SDK's folder).
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.MANDATE_NODE_DIR, "package.json"));
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");

const [url, token] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "ts-agent", version: "1.0.0" });
await client.connect(transport);
const out = { protocol: transport.protocolVersion ?? null };
out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
for (const amount of [50, 5000]) {
  const r = await client.callTool({ name: "pay", arguments: { amount, currency: "EUR" } });
  out[String(amount)] = { error: !!r.isError, text: r.content.filter((c) => c.type === "text").map((c) => c.text).join("") };
}
try {
  await client.callTool({ name: "pay", arguments: { amount: "50", currency: "EUR" } });
  out.wrongType = null;
} catch (e) {
  out.wrongType = e.code ?? String(e);
}
await transport.terminateSession();
await client.close();
console.log(JSON.stringify(out));
