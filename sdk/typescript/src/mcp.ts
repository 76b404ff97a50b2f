/**
 * MCP client auth for `@modelcontextprotocol/sdk` pointed at Mandate's MCP
 * gateway (`<broker>/mcp/<tool>`):
 *
 *   const transport = new StreamableHTTPClientTransport(new URL(await gatewayUrl(m, "payments")),
 *     { fetch: mcpFetch(m, "payments") });
 */
import type { Mandate } from "./client.js";
import { mandateFetch } from "./fetch.js";

/** The fetch for the SDK's `StreamableHTTPClientTransport({ fetch })`. */
export function mcpFetch(m: Mandate, tool: string, actions?: string[]): typeof fetch {
  return mandateFetch(m, { tool, actions });
}

/** The gateway URL of an MCP tool, as the broker gives it with its credential. */
export async function gatewayUrl(m: Mandate, tool: string): Promise<string> {
  const url = (await m.credential(tool)).mcpUrl;
  if (!url) throw new TypeError(`\`${tool}\` is not an MCP tool (its credential names no gateway URL)`);
  return url;
}
