// Run by `mandate exec` in the end-to-end test: the official Resend SDK,
// unchanged, configured only by the environment `mandate exec` sets
// (RESEND_API_KEY = a short-lived proxy credential, RESEND_BASE_URL = the
// broker's proxy). It also asks the agent socket for its identity, a fresh
// credential and a DPoP proof, and pauses between steps so the test can
// look at /proc/<pid>/environ and revoke the run.
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { createRequire } from "node:module";

const require = createRequire(path.join(process.env.MANDATE_NODE_DIR, "package.json"));
const { Resend } = require("resend");
const dir = process.argv[2];
const subject = process.argv[3];

function sock(method, p, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { socketPath: process.env.MANDATE_AGENT_SOCK, method, path: p, headers: { "content-type": "application/json" } },
      (res) => {
        let data = "";
        res.on("data", (c) => (data += c));
        res.on("end", () => resolve({ status: res.statusCode, body: JSON.parse(data) }));
      },
    );
    req.on("error", reject);
    if (body) req.write(JSON.stringify(body));
    req.end();
  });
}

async function waitFor(name) {
  while (!fs.existsSync(path.join(dir, name))) await new Promise((r) => setTimeout(r, 50));
}

const out = {};
fs.writeFileSync(path.join(dir, "pid"), String(process.pid));
await waitFor("go");
out.identity = await sock("GET", "/v1/identity");
out.credential = await sock("POST", "/v1/credentials", { tool: "resend", actions: ["send"] });
out.proof = await sock("POST", "/v1/dpop", { method: "GET", url: "https://tool.example/x" });
out.bad = await sock("POST", "/v1/credentials", { tool: "resend", actions: ["delete"] });
out.badProof = await sock("POST", "/v1/dpop", { method: "get", url: "ftp://x" });
out.badBody = await sock("POST", "/v1/credentials", { tool: "resend", extra: 1 });
// Hand a narrowed mandate to a sub-agent's key (RFC 7638's example thumbprint).
out.attenuated = await sock("POST", "/v1/attenuate", {
  to: "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs", to_name: "summarizer", only: ["resend:send"], uses: 2,
});
out.badAttenuate = await sock("POST", "/v1/attenuate", { to: "not-a-thumbprint" });
const resend = new Resend(process.env.RESEND_API_KEY);
out.first = await resend.emails.send({
  from: "agent@mandate.test", to: ["ops@example.com"], subject, html: "<p>sent through the proxy</p>",
});
fs.writeFileSync(path.join(dir, "sent"), "1");
await waitFor("again");
out.second = await resend.emails.send({
  from: "agent@mandate.test", to: ["ops@example.com"], subject: subject + " again", html: "<p>x</p>",
});
fs.writeFileSync(path.join(dir, "out.json"), JSON.stringify(out));
process.exit(7);
