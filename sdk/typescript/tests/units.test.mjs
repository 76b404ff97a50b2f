// The pure parts of @mandate/sdk, with node:test (run by test_ts_sdk.py).
import assert from "node:assert/strict";
import { inspect } from "node:util";
import test from "node:test";

const { under, toolFor, htu, Credential, RunKey, Mandate, ApprovalPending, Unavailable, Revoked } = await import(process.env.MANDATE_TS_SDK);

test("a URL belongs to a tool by origin and whole path segments", () => {
  const base = "https://b.example/mcp/pay";
  for (const ok of [base, "https://B.example:443/mcp/pay/x?y=1", "https://b.example/mcp/pay/"]) assert.equal(under(ok, base), true, ok);
  for (const no of ["https://b.example/mcp/payments", "https://b.example/mcp/pay/../x", "https://b.example/mcp/pay/%2e%2E/x",
    "https://b.example//mcp/pay", "https://b.example/mcp/pay%2fx", "https://b.example@evil.example/mcp/pay",
    "http://b.example/mcp/pay", "https://b.example:8443/mcp/pay", "urn:x"]) assert.equal(under(no, base), false, no);
  const me = { tools: [{ name: "api", audience: "https://b.example/" }, { name: "pay", mcp_url: base }, { name: "mail", audience: "urn:mail" }] };
  assert.equal(toolFor(me, "https://b.example/mcp/pay/x"), "pay");
  assert.equal(toolFor(me, "https://b.example/other"), "api");
  assert.equal(toolFor(me, "https://elsewhere.example/mcp/pay"), undefined);
});

test("proofs carry no userinfo, query or fragment", () => {
  assert.equal(htu("https://u:p@h.example:8443/p?q#f"), "https://h.example:8443/p");
});

test("a credential hides its token and renews by its whole life", () => {
  const claims = Buffer.from(JSON.stringify({ iat: 1000, exp: 1300 })).toString("base64url");
  const c = Credential.fromAnswer("crm", { access_token: `h.${claims}.s`, token_type: "DPoP", expires_in: 120 }, 5000);
  assert.equal(c.fresh(5019), true);
  assert.equal(c.fresh(5021), false);
  for (const shown of [JSON.stringify(c), String(c), inspect(c), JSON.stringify(Object.keys(c))]) assert.ok(!shown.includes(claims), shown);
  for (const bad of [{ access_token: "t", expires_in: "soon" }, { access_token: "t", expires_in: Infinity }, { expires_in: 5 }, [1], null]) {
    assert.throws(() => Credential.fromAnswer("crm", bad, 0), Unavailable);
  }
});

test("refusals become errors by kind; intervals are bounded", async () => {
  const { fromAnswer } = await import(process.env.MANDATE_TS_SDK.replace(/index\.js$/, "errors.js"));
  assert.ok(fromAnswer(400, { error: "invalid_grant", error_description: "the mandate has been revoked (run)" }) instanceof Revoked);
  assert.ok(fromAnswer(429, { error: "slow_down" }) instanceof Unavailable);
  assert.ok(fromAnswer(502, "x") instanceof Unavailable);
  assert.equal(new ApprovalPending({ interval: 0 }).interval, 1);
  assert.equal(new ApprovalPending({ interval: Infinity }).interval, 5);
  assert.equal(new ApprovalPending({ interval: 1e9 }).interval, 300);
});

test("keys stay private; secrets with stray characters are refused unquoted; http only on this host", async () => {
  const key = await RunKey.generate("ES256");
  assert.equal(inspect(key), "RunKey(ES256)");
  assert.ok(!JSON.stringify(key).includes('"d"'));
  await assert.rejects(key.exportPrivateJwk());
  await assert.rejects(Mandate.join("http://127.0.0.1:1", "mj_secret\nX-Evil: 1", { tenant: "t", agent: "a" }), (e) => !String(e).includes("secret"));
  assert.throws(() => Mandate.fromMandate("http://broker.example", "m.a.n", key), /in clear/);
  Mandate.fromMandate("http://[::1]:1", "m.a.n", key);
  Mandate.fromMandate("https://broker.example", "m.a.n", key);
  assert.throws(() => Mandate.fromEnv({}), /mandate exec/);
});

test("the socket client settles when the wrapper cuts its answer, and on time", async () => {
  const { unix } = await import(process.env.MANDATE_TS_SDK.replace(/index\.js$/, "http.js"));
  const net = await import("node:net");
  const os = await import("node:os");
  const path = await import("node:path");
  const sock = path.join(os.tmpdir(), `mandate-cut-${process.pid}.sock`);
  const server = net.createServer((c) => {
    c.once("data", () => {
      c.write("HTTP/1.1 200 OK\r\ncontent-length: 100\r\ncontent-type: application/json\r\n\r\n{\"a\":");
      setTimeout(() => c.destroy(), 20);
    });
  });
  await new Promise((r) => server.listen(sock, r));
  try {
    await assert.rejects(unix(sock, "GET", "/v1/identity", undefined, 2000), (e) => e instanceof Unavailable && /cut/.test(e.message));
    const silent = net.createServer(() => {});
    const sock2 = `${sock}.2`;
    await new Promise((r) => silent.listen(sock2, r));
    await assert.rejects(unix(sock2, "GET", "/v1/identity", undefined, 300), (e) => e instanceof Unavailable && /in time/.test(e.message));
    silent.close();
  } finally {
    server.close();
  }
});

test("a credential that cannot go in a header is refused unquoted; held ones are frozen", () => {
  assert.throws(() => Credential.fromAnswer("crm", { access_token: "SEC\nRET", expires_in: 60 }, 0), (e) => e instanceof Unavailable && !e.message.includes("SEC"));
  const c = Credential.fromAnswer("crm", { access_token: "tok", expires_in: 60, mcp_url: "https://b.example/mcp/crm" }, 0);
  assert.throws(() => { c.mcpUrl = undefined; }, TypeError);
  assert.equal(c.accessToken, "tok");
});

test("a saved key loads again and signs the same", async () => {
  for (const alg of ["EdDSA", "ES256"]) {
    const k = await RunKey.generate(alg, true);
    const again = await RunKey.fromPrivateJwk(await k.exportPrivateJwk());
    assert.equal(await again.thumbprint(), await k.thumbprint());
    assert.equal(again.alg, alg);
  }
});
