/**
 * What can go wrong, as error classes a caller can tell apart with
 * `instanceof`. Each carries the broker's (or the `mandate exec` wrapper's)
 * OAuth error `code` and its `description` (why, and what to do); none
 * ever carries a token, a mandate or a key.
 */

export class MandateError extends Error {
  constructor(
    readonly code: string,
    readonly description: string,
    readonly status?: number,
  ) {
    super(description ? `${code}: ${description}` : code);
    this.name = new.target.name;
  }
}

/** `Mandate.fromEnv()` outside `mandate exec` (no `MANDATE_AGENT_SOCK`). */
export class NotUnderExec extends MandateError {}
/** The broker or socket cannot be reached, asks to slow down, or answered
 * something malformed; nothing was issued. Retry later. */
export class Unavailable extends MandateError {}
/** Policy, the grant or the agent's envelope does not allow this. */
export class Denied extends MandateError {}
/** The run (or its agent, principal, grant, tenant) was revoked, or the kill switch. */
export class Revoked extends MandateError {}
/** The run's mandate, or the approval named, expired. */
export class Expired extends MandateError {}

/** A human must approve this request first (or the run is suspended). */
export class ApprovalPending extends MandateError {
  readonly approvalId?: string;
  /** Seconds to wait before asking again (1 to 300). */
  readonly interval: number;
  readonly approvers: unknown[];
  readonly expiresIn?: number;

  constructor(body: Record<string, unknown>, status?: number) {
    super("authorization_pending", String(body.error_description ?? ""), status);
    const i = body.interval;
    this.interval = typeof i === "number" && Number.isFinite(i) ? Math.min(Math.max(1, Math.floor(i)), 300) : 5;
    this.approvalId = typeof body.approval_id === "string" ? body.approval_id : undefined;
    this.approvers = Array.isArray(body.approvers) ? body.approvers : [];
    this.expiresIn = typeof body.expires_in === "number" ? body.expires_in : undefined;
  }
}

/** `wait` passed and no human approved. */
export class ApprovalTimeout extends ApprovalPending {}

/** The error for a refusal `body` (`{error, error_description}`). */
export function fromAnswer(status: number, body: unknown): MandateError {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return new Unavailable("server_error", `unexpected answer (HTTP ${status})`, status);
  }
  const b = body as Record<string, unknown>;
  const code = typeof b.error === "string" ? b.error : "server_error";
  const description = typeof b.error_description === "string" ? b.error_description : "";
  if (code === "authorization_pending") return new ApprovalPending(b, status);
  if (code === "invalid_grant" && description.includes("revoked")) return new Revoked(code, description, status);
  if ((code === "invalid_grant" && description.includes("expired")) || code === "expired_token") {
    return new Expired(code, description, status);
  }
  if (["access_denied", "invalid_scope", "invalid_target"].includes(code)) return new Denied(code, description, status);
  if (code === "temporarily_unavailable" || code === "slow_down" || status === 429 || status >= 500) {
    return new Unavailable(code, description, status);
  }
  return new MandateError(code, description, status);
}
