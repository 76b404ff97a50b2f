/**
 * The run key of the standalone mode (WebCrypto: Ed25519 or P-256) and the
 * DPoP proofs it makes (RFC 9449 §4.2); thumbprints per RFC 7638. The
 * private key is not extractable unless asked for at generation.
 */
import { webcrypto } from "node:crypto";

const subtle = webcrypto.subtle;
export type Alg = "EdDSA" | "ES256";

export function b64url(data: Uint8Array | ArrayBuffer): string {
  return Buffer.from(data instanceof ArrayBuffer ? new Uint8Array(data) : data).toString("base64url");
}

/** The `htu` of a proof: without query, fragment and user info. */
export function htu(url: string): string {
  const u = new URL(url);
  return `${u.protocol}//${u.host}${u.pathname || "/"}`;
}

/** The `ath` claim: base64url SHA-256 of the access token. */
export async function ath(accessToken: string): Promise<string> {
  return b64url(await subtle.digest("SHA-256", new TextEncoder().encode(accessToken)));
}

export class RunKey {
  private constructor(
    private readonly keys: webcrypto.CryptoKeyPair,
    readonly alg: Alg,
    readonly jwk: Record<string, string>,
  ) {}

  /** A new key pair; `extractable` only if the private key must be saved. */
  static async generate(alg: Alg = "EdDSA", extractable = false): Promise<RunKey> {
    if (alg !== "EdDSA" && alg !== "ES256") throw new TypeError('alg is "EdDSA" or "ES256"');
    const params = alg === "EdDSA" ? { name: "Ed25519" } : { name: "ECDSA", namedCurve: "P-256" };
    const keys = (await subtle.generateKey(params, extractable, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
    const full = (await subtle.exportKey("jwk", keys.publicKey)) as Record<string, string>;
    const jwk: Record<string, string> = alg === "EdDSA" ? { kty: "OKP", crv: "Ed25519", x: full.x } : { kty: "EC", crv: "P-256", x: full.x, y: full.y };
    return new RunKey(keys, alg, jwk);
  }

  /** A key saved with `exportPrivateJwk()` (of a key generated `extractable`). */
  static async fromPrivateJwk(jwk: Record<string, unknown>, extractable = false): Promise<RunKey> {
    const alg: Alg = jwk.kty === "OKP" && jwk.crv === "Ed25519" ? "EdDSA" : "ES256";
    if (alg === "ES256" && !(jwk.kty === "EC" && jwk.crv === "P-256")) throw new TypeError("a run key is Ed25519 or P-256");
    const params = alg === "EdDSA" ? { name: "Ed25519" } : { name: "ECDSA", namedCurve: "P-256" };
    const { d: _d, key_ops: _k, ...pub } = jwk;
    const privateKey = await subtle.importKey("jwk", jwk as webcrypto.JsonWebKey, params, extractable, ["sign"]);
    const publicKey = await subtle.importKey("jwk", pub as webcrypto.JsonWebKey, params, true, ["verify"]);
    const x = String(jwk.x);
    const pubJwk: Record<string, string> = alg === "EdDSA" ? { kty: "OKP", crv: "Ed25519", x } : { kty: "EC", crv: "P-256", x, y: String(jwk.y) };
    return new RunKey({ privateKey, publicKey }, alg, pubJwk);
  }

  /** RFC 7638 SHA-256 thumbprint (`cnf.jkt`; attenuation's `to`). */
  async thumbprint(): Promise<string> {
    const members = Object.fromEntries(Object.entries(this.jwk).filter(([k]) => ["crv", "kty", "x", "y"].includes(k)).sort(([a], [b]) => (a < b ? -1 : 1)));
    return b64url(await subtle.digest("SHA-256", new TextEncoder().encode(JSON.stringify(members))));
  }

  /** A JWS signature: Ed25519, or ES256's r || s (WebCrypto's own form). */
  async sign(data: Uint8Array): Promise<Uint8Array> {
    const params = this.alg === "EdDSA" ? { name: "Ed25519" } : { name: "ECDSA", hash: "SHA-256" };
    return new Uint8Array(await subtle.sign(params, this.keys.privateKey, data));
  }

  /** A DPoP proof for one request; a fresh `jti` each time. */
  async proof(method: string, url: string, opts: { accessToken?: string; nonce?: string; now?: number } = {}): Promise<string> {
    const header = { typ: "dpop+jwt", alg: this.alg, jwk: this.jwk };
    const claims: Record<string, unknown> = {
      jti: b64url(webcrypto.getRandomValues(new Uint8Array(16))),
      htm: method.toUpperCase(),
      htu: htu(url),
      iat: Math.floor((opts.now ?? Date.now()) / 1000),
    };
    if (opts.accessToken !== undefined) claims.ath = await ath(opts.accessToken);
    if (opts.nonce !== undefined) claims.nonce = opts.nonce;
    const input = `${b64url(Buffer.from(JSON.stringify(header)))}.${b64url(Buffer.from(JSON.stringify(claims)))}`;
    return `${input}.${b64url(await this.sign(new TextEncoder().encode(input)))}`;
  }

  /** The private key as a JWK, only for a key generated `extractable`. */
  async exportPrivateJwk(): Promise<Record<string, unknown>> {
    return (await subtle.exportKey("jwk", this.keys.privateKey)) as Record<string, unknown>;
  }

  toJSON(): Record<string, unknown> {
    return { alg: this.alg, jwk: this.jwk };
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `RunKey(${this.alg})`;
  }
}
