/**
 * Mandate for TypeScript agents: a short-lived credential per tool from the
 * Mandate broker, with DPoP proofs, approvals and renewal handled.
 *
 *   import { Mandate, mandateFetch } from "@mandate/sdk";
 *   const m = Mandate.fromEnv();                       // under `mandate exec`
 *   const api = mandateFetch(m, { tool: "payments" }); // a fetch with credentials
 */
export { Credential, Mandate, SOCKET_ENV } from "./client.js";
export type { CredentialOptions, Details, JoinOptions } from "./client.js";
export { ApprovalPending, ApprovalTimeout, Denied, Expired, MandateError, NotUnderExec, Revoked, Unavailable } from "./errors.js";
export { mandateFetch, toolFor, under } from "./fetch.js";
export type { FetchOptions } from "./fetch.js";
export { RunKey, htu } from "./keys.js";
export { gatewayUrl, mcpFetch } from "./mcp.js";
