/**
 * `Mandate`: credentials for an agent run, from `mandate exec`'s socket or
 * straight from the broker (standalone, the run key held here in WebCrypto).
 * Credentials are cached per (tool, actions) and asked anew after two
 * thirds of their life; a request with `details` (RFC 9396) is never cached.
 */
import * as http from "./http.js";
import { ApprovalPending, ApprovalTimeout, MandateError, NotUnderExec, Unavailable, fromAnswer } from "./errors.js";
import { RunKey } from "./keys.js";

export const SOCKET_ENV = "MANDATE_AGENT_SOCK";
const TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
const MANDATE_TOKEN_TYPE = "urn:mandate:params:oauth:token-type:mandate";

export type Details = { amount?: number; currency?: string; target?: string; description?: string };
type Obj = Record<string, unknown>;

/** A credential for one tool; its token never shows in logs or JSON. */
export class Credential {
  readonly accessToken!: string;
  constructor(
    readonly tool: string,
    accessToken: string,
    readonly tokenType: string,
    readonly scope: string,
    readonly issuedAt: number,
    readonly expiresAt: number,
    readonly credentialId?: string,
    readonly proxyUrl?: string,
    readonly mcpUrl?: string,
  ) {
    // Not enumerable (never in JSON, spreads or logs); frozen, since one
    // held credential serves every caller.
    Object.defineProperty(this, "accessToken", { value: accessToken, enumerable: false, writable: false });
    Object.freeze(this);
  }

  /** Each use needs a DPoP proof of the run key. */
  get bound(): boolean {
    return this.tokenType.toLowerCase() === "dpop";
  }

  /** More than a third of its life left. */
  fresh(now = Date.now() / 1000): boolean {
    return this.expiresAt - now > (this.expiresAt - this.issuedAt) / 3;
  }

  /** From the token endpoint's (or the socket's) answer: `expires_in` is
   * what is left; the life, for renewal, is the JWT's `exp - iat`. */
  static fromAnswer(tool: string, body: unknown, now: number): Credential {
    if (typeof body !== "object" || body === null || Array.isArray(body)) throw new Unavailable("server_error", "the answer is not a JSON object");
    const b = body as Obj;
    const left = b.expires_in;
    if (typeof b.access_token !== "string" || !/^[\x21-\x7e]+$/.test(b.access_token)) {
      // (Not quoted: it would be the secret.)
      throw new Unavailable("server_error", "the answer carries no credential that fits an HTTP header");
    }
    if (typeof left !== "number" || !Number.isFinite(left) || left < 0) throw new Unavailable("server_error", "the answer's `expires_in` is not a number of seconds");
    const life = Math.max(jwtLife(b.access_token) ?? left, left);
    const str = (k: string) => (typeof b[k] === "string" ? (b[k] as string) : undefined);
    return new Credential(tool, b.access_token, str("token_type") ?? "Bearer", str("scope") ?? "", now + left - life, now + left, str("credential_id"), str("proxy_url"), str("mcp_url"));
  }

  toJSON(): Obj {
    return { tool: this.tool, tokenType: this.tokenType, scope: this.scope, expiresAt: this.expiresAt, credentialId: this.credentialId };
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `Credential(${JSON.stringify(this.toJSON())})`;
  }
}

function jwtLife(token: string): number | undefined {
  const parts = token.split(".");
  if (parts.length !== 3) return undefined;
  try {
    const c = JSON.parse(Buffer.from(parts[1], "base64url").toString()) as Obj;
    const life = Number(c.exp) - Number(c.iat);
    return Number.isFinite(life) && life > 0 ? life : undefined;
  } catch {
    return undefined;
  }
}

function object(a: http.Answer): Obj {
  if (typeof a.body !== "object" || a.body === null || Array.isArray(a.body)) throw new Unavailable("server_error", `the answer (HTTP ${a.status}) is not a JSON object`);
  return a.body as Obj;
}

/** Trimmed; refused (never quoted) unless one word of printable ASCII. */
function headerSafe(secret: string, what: string): string {
  const s = String(secret).trim();
  if (!s || !/^[\x21-\x7e]+$/.test(s)) throw new TypeError(`${what} is not one word of printable ASCII (was it read with extra characters?)`);
  return s;
}

/** An `http://` broker only on this host, unless allowed. */
function checkBroker(broker: string, allowHttp: boolean): void {
  const u = new URL(broker);
  if (u.protocol === "https:") return;
  const host = u.hostname.replace(/^\[|\]$/g, "");
  const loopback = host === "localhost" || host === "::1" || /^127\./.test(host);
  if (u.protocol !== "http:" || !(loopback || allowHttp)) {
    throw new TypeError(`refusing to send a join token or mandate in clear to ${host}: use https, or allowHttp on a network you trust`);
  }
}

interface Backend {
  identity(): Promise<Obj>;
  obtain(tool: string, actions: string[], details: Details | undefined, fresh: boolean, approvalId?: string): Promise<unknown>;
  proof(method: string, url: string, accessToken?: string, nonce?: string): Promise<string>;
  attenuate(n: Obj): Promise<Obj>;
}

class Socket implements Backend {
  constructor(private path: string, private timeoutMs: number) {}


  private call(method: string, path: string, body?: unknown) {
    return http.unix(this.path, method, path, body, this.timeoutMs);
  }

  async identity(): Promise<Obj> {
    const a = await this.call("GET", "/v1/identity");
    if (a.status !== 200) throw fromAnswer(a.status, a.body);
    return object(a);
  }

  async obtain(tool: string, actions: string[], details: Details | undefined, fresh: boolean): Promise<unknown> {
    const body: Obj = { tool, actions };
    if (details !== undefined) body.details = details;
    if (fresh) body.fresh = true;
    const a = await this.call("POST", "/v1/credentials", body);
    if (a.status === 200) return a.body;
    if (a.status === 202) throw new ApprovalPending((a.body ?? {}) as Obj, a.status);
    throw fromAnswer(a.status, a.body);
  }

  async proof(method: string, url: string, accessToken?: string, nonce?: string): Promise<string> {
    const a = await this.call("POST", "/v1/dpop", { method: method.toUpperCase(), url, access_token: accessToken, nonce });
    const p = a.status === 200 ? object(a).dpop : undefined;
    if (typeof p !== "string") throw fromAnswer(a.status, a.body);
    return p;
  }

  async attenuate(n: Obj): Promise<Obj> {
    const a = await this.call("POST", "/v1/attenuate", n);
    if (a.status !== 200) throw fromAnswer(a.status, a.body);
    return object(a);
  }

  async delegate(body: Obj): Promise<Obj> {
    const a = await this.call("POST", "/v1/delegate", body);
    if (a.status !== 200) throw fromAnswer(a.status, a.body);
    return object(a);
  }

  get timeout(): number {
    return this.timeoutMs;
  }
}

class Standalone implements Backend {
  nonce?: string;
  readonly tokenEndpoint: string;
  constructor(readonly broker: string, readonly mandate: string, readonly key: RunKey, readonly started: Obj, readonly timeoutMs: number, readonly allowHttp = false) {
    this.broker = broker.replace(/\/+$/, "");
    this.tokenEndpoint = typeof started.token_endpoint === "string" ? started.token_endpoint : `${this.broker}/oauth/token`;
    // The mandate goes there: the same rule as for the broker's own URL.
    checkBroker(this.tokenEndpoint, allowHttp);
  }

  async identity(): Promise<Obj> {
    const { mandate: _, ...rest } = this.started;
    return { ...rest, key_thumbprint: await this.key.thumbprint() };
  }

  /** POST with a DPoP proof; once more with the broker's nonce if it asks (RFC 9449 §8). */
  async postProved(url: string, headers: Record<string, string>, body: string): Promise<http.Answer> {
    let a: http.Answer | undefined;
    for (let i = 0; i < 2; i++) {
      a = await http.request(url, "POST", { ...headers, DPoP: await this.key.proof("POST", url, { nonce: this.nonce }) }, body, this.timeoutMs);
      if (a.headers["dpop-nonce"]) this.nonce = a.headers["dpop-nonce"];
      if ((a.body as Obj | null)?.error !== "use_dpop_nonce") break;
    }
    return a as http.Answer;
  }

  async obtain(tool: string, actions: string[], details: Details | undefined, _fresh: boolean, approvalId?: string): Promise<unknown> {
    const form = new URLSearchParams({ grant_type: TOKEN_EXCHANGE, subject_token: this.mandate, subject_token_type: MANDATE_TOKEN_TYPE, audience: tool, scope: actions.join(" ") });
    if (details !== undefined) form.set("authorization_details", JSON.stringify([{ ...details, type: "mandate" }]));
    if (approvalId !== undefined) form.set("approval_id", approvalId);
    const a = await this.postProved(this.tokenEndpoint, { "content-type": "application/x-www-form-urlencoded" }, form.toString());
    if (a.status === 200) return a.body;
    throw fromAnswer(a.status, a.body);
  }

  proof(method: string, url: string, accessToken?: string, nonce?: string): Promise<string> {
    return this.key.proof(method, url, { accessToken, nonce });
  }

  async attenuate(): Promise<Obj> {
    throw new MandateError("not_supported", "attenuation is signed in Mandate's offline block format, which this SDK makes only under `mandate exec` (the wrapper signs); standalone, use `mandate token attenuate`, or delegate() for a sub-agent run");
  }

  async end(): Promise<void> {
    const a = await http.request(`${this.broker}/oauth/revoke`, "POST", { "content-type": "application/x-www-form-urlencoded" }, new URLSearchParams({ token: this.mandate }).toString(), this.timeoutMs);
    if (a.status !== 200) throw fromAnswer(a.status, a.body);
  }

  async delegate(body: Obj): Promise<Obj> {
    const url = `${this.broker}/v1/runs/delegate`;
    const a = await this.postProved(url, { "content-type": "application/json" }, JSON.stringify({ mandate: this.mandate, ...body }));
    if (a.status === 200 || a.status === 201) return object(a);
    throw fromAnswer(a.status, a.body);
  }
}

export interface CredentialOptions {
  /** Default: every action the run holds on the tool. */
  actions?: string[];
  /** RFC 9396 details of this one request (never cached). */
  details?: Details;
  /** Drop the held credential first. */
  fresh?: boolean;
  /** Seconds to wait for a human's approval (polling at the broker's interval). */
  wait?: number;
}

export interface JoinOptions {
  tenant: string;
  agent: string;
  principal?: string;
  grant?: string;
  task?: string;
  ttlSecs?: number;
  /** Tools whose URLs `mandateFetch` matches (as `mandate exec --tool`). */
  tools?: string[];
  capabilities?: string[];
  key?: RunKey;
  alg?: "EdDSA" | "ES256";
  timeoutMs?: number;
  /** Allow an `http://` broker off this host (join tokens then travel in clear). */
  allowHttp?: boolean;
}

export class Mandate {
  readonly #b: Backend;
  #held = new Map<string, Credential>();
  #stale = new Set<string>();
  #inflight = new Map<string, Promise<Credential>>();
  #me?: Obj;

  private constructor(b: Backend) {
    this.#b = b;
  }

  /** Under `mandate exec`: the wrapper's socket (`MANDATE_AGENT_SOCK`). */
  static fromEnv(env: Record<string, string | undefined> = process.env, timeoutMs = 30_000): Mandate {
    const path = env[SOCKET_ENV];
    if (!path) {
      throw new NotUnderExec("not_under_exec", `${SOCKET_ENV} is not set: run the agent under \`mandate exec --tenant T --agent A -- COMMAND\`, or use Mandate.join() with a join token`);
    }
    return new Mandate(new Socket(path, timeoutMs));
  }

  /** Standalone: start a run with a one-time join token; the run key is made here. */
  static async join(broker: string, joinToken: string, o: JoinOptions): Promise<Mandate> {
    checkBroker(broker, o.allowHttp ?? false);
    const token = headerSafe(joinToken, "the join token");
    const key = o.key ?? (await RunKey.generate(o.alg ?? "EdDSA"));
    const body: Obj = { tenant: o.tenant, agent: o.agent, jwk: key.jwk, principal: o.principal, grant: o.grant, task: o.task, ttl_secs: o.ttlSecs, tools: o.tools, capabilities: o.capabilities };
    for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
    const a = await http.request(`${broker.replace(/\/+$/, "")}/v1/runs`, "POST", { "content-type": "application/json", authorization: `Bearer ${token}` }, JSON.stringify(body), o.timeoutMs);
    const started = a.status === 201 ? object(a) : undefined;
    if (!started || typeof started.mandate !== "string") throw fromAnswer(a.status, a.body);
    return new Mandate(new Standalone(broker, started.mandate, key, { tenant: o.tenant, agent: o.agent, principal: o.principal, ...started }, o.timeoutMs ?? 30_000, o.allowHttp));
  }

  /** Standalone: a mandate handed to this runtime with the key it names as holder. */
  static fromMandate(broker: string, mandate: string, key: RunKey, o: { timeoutMs?: number; allowHttp?: boolean } = {}): Mandate {
    checkBroker(broker, o.allowHttp ?? false);
    return new Mandate(new Standalone(broker, headerSafe(mandate, "the mandate"), key, {}, o.timeoutMs ?? 30_000, o.allowHttp));
  }

  get standalone(): boolean {
    return this.#b instanceof Standalone;
  }

  /** The run: `run`, `run_id`, `tenant`, `agent`, `principal`, `capabilities`, `tools`. */
  async identity(): Promise<Obj> {
    this.#me ??= await this.#b.identity();
    return { ...this.#me };
  }

  private async actionsFor(tool: string, actions?: string[]): Promise<string[]> {
    if (actions !== undefined) {
      const out = [...new Set(actions)].sort();
      if (!out.length) throw new TypeError("name at least one action");
      return out;
    }
    const me = await this.identity();
    for (const t of (Array.isArray(me.tools) ? me.tools : []) as Obj[]) {
      if (t?.name === tool && Array.isArray(t.actions) && t.actions.length) return [...(t.actions as string[])].sort();
    }
    const caps = (Array.isArray(me.capabilities) ? me.capabilities : []) as unknown[];
    const held = [...new Set(caps.filter((c): c is string => typeof c === "string" && c.startsWith(`${tool}:`) && !c.includes("*")).map((c) => c.slice(tool.length + 1)))].sort();
    if (held.length) return held;
    throw new TypeError(`name the actions you need on \`${tool}\` (the run lists none for it)`);
  }

  private async attempt(tool: string, actions: string[], details: Details | undefined, fresh: boolean, approvalId?: string): Promise<Credential> {
    const obtain = async () => Credential.fromAnswer(tool, await this.#b.obtain(tool, actions, details, fresh, approvalId), Date.now() / 1000);
    if (details !== undefined) return obtain(); // for one request: never cached, never shared
    const key = JSON.stringify([tool, actions]);
    fresh = this.#stale.delete(key) || fresh;
    const held = this.#held.get(key);
    if (!fresh && held?.fresh()) return held;
    // Concurrent callers of the same credential share one exchange (and
    // one approval request).
    const running = this.#inflight.get(key);
    if (running && !fresh) return running;
    const p = obtain().then((cred) => {
      this.#held.set(key, cred);
      return cred;
    });
    this.#inflight.set(key, p);
    try {
      return await p;
    } finally {
      if (this.#inflight.get(key) === p) this.#inflight.delete(key);
    }
  }

  /** A credential for `tool`. A request a human must approve throws
   * `ApprovalPending`; with `wait` (seconds) it is asked again at the
   * broker's interval until approved, then `ApprovalTimeout`. */
  async credential(tool: string, o: CredentialOptions = {}): Promise<Credential> {
    if (o.wait !== undefined && !(Number.isFinite(o.wait) && o.wait >= 0)) throw new TypeError("`wait` is a finite number of seconds");
    const deadline = o.wait === undefined ? undefined : performance.now() + o.wait * 1000;
    const actions = await this.actionsFor(tool, o.actions);
    let approval: string | undefined;
    let fresh = o.fresh ?? false;
    for (;;) {
      try {
        return await this.attempt(tool, actions, o.details, fresh, approval);
      } catch (e) {
        if (!(e instanceof ApprovalPending) || deadline === undefined) throw e;
        approval = e.approvalId ?? approval;
        const pause = Math.min(e.interval * 1000, deadline - performance.now());
        if (pause <= 0) {
          throw new ApprovalTimeout({ error_description: `no approval within ${o.wait} s: ${e.description}`, approval_id: e.approvalId, interval: e.interval, approvers: e.approvers }, e.status);
        }
        await new Promise((r) => setTimeout(r, pause));
      }
      fresh = false;
    }
  }

  /** Drops held credentials for `tool`: the next request gets a fresh one. */
  forget(tool: string): void {
    for (const k of [...this.#held.keys()]) {
      if ((JSON.parse(k) as [string])[0] === tool) {
        this.#held.delete(k);
        this.#stale.add(k);
      }
    }
  }

  /** A DPoP proof of the run key for one request (RFC 9449). */
  proof(method: string, url: string, o: { accessToken?: string; nonce?: string } = {}): Promise<string> {
    return this.#b.proof(method, url, o.accessToken, o.nonce);
  }

  /** Under `mandate exec`: the run's mandate narrowed for the key with
   * thumbprint `to` (a sub-agent's), e.g. `only: ["tool:action"]`. */
  async attenuate(to: string, o: { only?: string[]; ttlSecs?: number; uses?: number; pathPrefix?: string; toName?: string } = {}): Promise<string> {
    const n: Obj = { to, only: o.only, ttl_secs: o.ttlSecs, uses: o.uses, path_prefix: o.pathPrefix, to_name: o.toName };
    for (const k of Object.keys(n)) if (n[k] === undefined) delete n[k];
    const m = (await this.#b.attenuate(n)).mandate;
    if (typeof m !== "string") throw new Unavailable("server_error", "the answer carries no mandate");
    return m;
  }

  /** A child run for `agent` with at most this run's capabilities; the
   * child's `Mandate`, standalone with its own key. Under `mandate exec`
   * the wrapper proves the parent run (its key never enters this process). */
  async delegate(agent: string, o: { capabilities?: string[]; ttlSecs?: number; task?: string; key?: RunKey } = {}): Promise<Mandate> {
    const b = this.#b;
    const key = o.key ?? (await RunKey.generate(b instanceof Standalone ? b.key.alg : "EdDSA"));
    const body: Obj = { agent, jwk: key.jwk, capabilities: o.capabilities, ttl_secs: o.ttlSecs, task: o.task };
    for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
    const child = await (b as Socket | Standalone).delegate(body);
    if (typeof child.mandate !== "string") throw new Unavailable("server_error", "the answer carries no mandate");
    if (b instanceof Standalone) return new Mandate(new Standalone(b.broker, child.mandate, key, child, b.timeoutMs, b.allowHttp));
    const broker = String((await this.identity()).broker ?? "");
    checkBroker(broker, false);
    return new Mandate(new Standalone(broker, child.mandate, key, child, (b as Socket).timeout));
  }

  /** Standalone: ends this run now (RFC 7009 revocation of its mandate by
   * its holder); every credential it got is refused from here on. Under
   * `mandate exec` the run ends when the command exits. */
  async end(): Promise<void> {
    if (!(this.#b instanceof Standalone)) throw new MandateError("not_supported", "under `mandate exec` the run ends when the command exits");
    await this.#b.end();
    this.#held.clear();
  }

  toJSON(): string {
    return this.toString();
  }

  toString(): string {
    return `Mandate(${this.standalone ? "standalone" : "mandate exec"})`;
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }
}
