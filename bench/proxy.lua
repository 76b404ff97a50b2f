-- wrk: one Resend-like API call (POST /emails with a small JSON body),
-- either straight to the upstream or through the broker's proxy.
-- env: KEY (the value for `Authorization: Bearer`), TARGET_PATH
local body = '{"from":"agent@mandate.test","to":["ops@example.com"],"subject":"weekly report","html":"<p>numbers</p>"}'
local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Bearer " .. os.getenv("KEY"),
}
local path = os.getenv("TARGET_PATH")
function request()
  return wrk.format("POST", path, headers, body)
end
