-- wrk: one MCP `tools/call` (JSON-RPC over streamable HTTP), straight to
-- the MCP server or through the broker's MCP gateway.
-- env: KEY (the value for `Authorization: Bearer`), TARGET_PATH, ARGS (JSON)
local body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"noop","arguments":' .. os.getenv("ARGS") .. '}}'
local headers = {
  ["Content-Type"] = "application/json",
  ["Accept"] = "application/json, text/event-stream",
  ["MCP-Protocol-Version"] = "2025-11-25",
  ["Authorization"] = "Bearer " .. os.getenv("KEY"),
}
local path = os.getenv("TARGET_PATH")
function request()
  return wrk.format("POST", path, headers, body)
end
