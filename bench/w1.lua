-- wrk: Mandate token exchange (RFC 8693) with a never-used DPoP proof per request.
-- env: BODY (form body file), PROOFS (one proof per line), THREADS (wrk -t)
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
local proofs, idx, body = {}, 0, ""
function init(args)
  local n, k = tonumber(os.getenv("THREADS") or "2"), 0
  for line in io.lines(os.getenv("PROOFS")) do
    if k % n == id then proofs[#proofs + 1] = line end
    k = k + 1
  end
  local f = io.open(os.getenv("BODY"), "r")
  body = f:read("*a")
  f:close()
end
function request()
  idx = idx + 1
  return wrk.format("POST", "/oauth/token", {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["DPoP"] = proofs[idx] or proofs[#proofs] }, body)
end
