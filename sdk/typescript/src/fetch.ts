/**
 * A `fetch` that attaches the right Mandate credential to each request:
 * `Authorization: DPoP <token>` with a fresh proof for this method and URL
 * (`ath` set) for a bound credential, `Authorization: Bearer` otherwise.
 * Once per request: a 401 asking for a DPoP nonce (RFC 9449 §9) is sent
 * again with it (kept per origin), a 401 `invalid_token` with a fresh
 * credential (at most every 10 s per tool). Only the answer of the URL the
 * credential went to is heeded (not a redirect target's).
 *
 * With `tool` named, every request gets its credential, except that one
 * the broker says is used at one URL (an MCP gateway's `mcp_url`, a
 * proxy's `proxy_url`) goes there only (`wrong_url` otherwise). Without,
 * the tool is found by the request's URL among the run's tools (origin and
 * whole path segments); other URLs get no credential.
 */
import type { Mandate } from "./client.js";
import { MandateError } from "./errors.js";

const FRESH_AT_MOST_EVERY_MS = 10_000;
type Obj = Record<string, unknown>;

function segments(url: URL | string): string[] | undefined {
  const path = typeof url === "string" ? url : url.pathname;
  const segs = path.split("/").slice(1);
  if (segs.length && segs[segs.length - 1] === "") segs.pop();
  for (const s of segs) {
    const low = s.toLowerCase().replaceAll("%2e", ".");
    if (s === "" || low === "." || low === ".." || low.includes("%2f") || low.includes("%5c") || s.includes("\\")) return undefined;
  }
  return segs;
}

/** `url` is at `base` or below: same origin, `base`'s whole path segments first. */
export function under(url: string, base: string): boolean {
  let u: URL, b: URL;
  try {
    u = new URL(url);
    b = new URL(base);
  } catch {
    return false;
  }
  if (!["http:", "https:"].includes(u.protocol) || u.origin !== b.origin) return false;
  // (WHATWG URL parsing removes dot segments, even encoded ones, so the
  // path as written is checked too: a server may read it otherwise.)
  const raw = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*([^?#]*)/i.exec(url)?.[1] ?? "";
  if (segments(raw || "/") === undefined) return false;
  const a = segments(u), c = segments(b);
  return a !== undefined && c !== undefined && c.every((s, i) => a[i] === s);
}

/** The run's tool whose URL (`mcp_url`, `proxy_url`, an http(s) `audience`) `url` is under. */
export function toolFor(identity: Obj, url: string): string | undefined {
  let best: [number, string] | undefined;
  for (const t of (Array.isArray(identity.tools) ? identity.tools : []) as Obj[]) {
    if (typeof t?.name !== "string") continue;
    for (const k of ["mcp_url", "proxy_url", "audience"]) {
      const base = t[k];
      if (typeof base === "string" && under(url, base)) {
        const depth = segments(new URL(base))?.length ?? 0;
        if (!best || depth > best[0]) best = [depth, t.name];
      }
    }
  }
  return best?.[1];
}

export interface FetchOptions {
  tool?: string;
  actions?: string[];
  /** The fetch to wrap (default: the global one). */
  fetch?: typeof fetch;
}

export function mandateFetch(m: Mandate, o: FetchOptions = {}): typeof fetch {
  const inner = o.fetch ?? globalThis.fetch;
  const nonces = new Map<string, string>();
  const refreshed = new Map<string, number>();

  async function attach(req: Request, fresh: boolean): Promise<string | undefined> {
    const tool = o.tool ?? toolFor(await m.identity(), req.url);
    if (tool === undefined) return undefined;
    const cred = await m.credential(tool, { actions: o.actions, fresh });
    const where = [cred.mcpUrl, cred.proxyUrl].filter((u): u is string => !!u);
    if (where.length && !where.some((u) => under(req.url, u))) {
      throw new MandateError("wrong_url", `the credential for \`${tool}\` is used at ${where[0]} only; this request goes elsewhere, so it was not sent`);
    }
    const kind = cred.tokenType.toLowerCase();
    if (kind === "bearer") {
      req.headers.set("authorization", `Bearer ${cred.accessToken}`);
    } else if (kind === "dpop") {
      req.headers.set("authorization", `DPoP ${cred.accessToken}`);
      req.headers.set("dpop", await m.proof(req.method, req.url, { accessToken: cred.accessToken, nonce: nonces.get(new URL(req.url).origin) }));
    } else {
      throw new MandateError("wrong_credential", `a \`${cred.tokenType}\` credential (\`${tool}\`) is not sent in an Authorization header`);
    }
    return tool;
  }

  return async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    let req = new Request(input, init);
    // fetch upper-cases standard methods but not e.g. `patch`: what is sent
    // and what the proof's `htm` says must be the same.
    if (req.method !== req.method.toUpperCase()) req = new Request(req, { method: req.method.toUpperCase() });
    // Options of Node's fetch that a Request does not keep (an undici
    // `dispatcher`: the caller's proxy, mTLS or pinned CA) are passed on.
    const extra = init && "dispatcher" in init ? { dispatcher: (init as { dispatcher?: unknown }).dispatcher } : undefined;
    const send = (r: Request) => inner(r, extra as RequestInit | undefined);
    const tool = await attach(req, false);
    if (tool === undefined) return send(req);
    // A request with a credential is not redirected by fetch (it would
    // carry the credential to the new URL on the same origin): the 3xx
    // comes back, and following it is a new request, which gets what its
    // URL calls for.
    if (req.redirect === "follow") req = new Request(req, { redirect: "manual" });
    const again = req.clone();
    const res = await send(req);
    const heard = res.url !== "" && !res.redirected && res.url.split("#")[0] === req.url.split("#")[0];
    const nonce = heard ? res.headers.get("dpop-nonce") : null;
    if (nonce) nonces.set(new URL(req.url).origin, nonce);
    const errors = heard && res.status === 401
      ? [...(res.headers.get("www-authenticate") ?? "").matchAll(/error="([^"]*)"/g)].map((x) => x[1])
      : [];
    let fresh: boolean;
    if (errors.includes("use_dpop_nonce") && nonce) {
      fresh = false;
    } else if (errors.includes("invalid_token") && Date.now() - (refreshed.get(tool) ?? -Infinity) >= FRESH_AT_MOST_EVERY_MS) {
      refreshed.set(tool, Date.now());
      fresh = true;
    } else {
      await again.body?.cancel();
      return res;
    }
    await res.body?.cancel();
    await attach(again, fresh);
    return send(again);
  };
}
