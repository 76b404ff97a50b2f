/** HTTP to the broker (fetch) and to the `mandate exec` socket (node:http). */
import { request as httpRequest } from "node:http";
import { Unavailable } from "./errors.js";

/** Most bytes of an answer read (the broker's answers are small). */
const MAX_ANSWER = 1 << 20;

export interface Answer {
  status: number;
  headers: Record<string, string>;
  body: unknown;
}

function parse(text: string): unknown {
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

/** A JSON request to the `mandate exec` socket. */
export function unix(socketPath: string, method: string, path: string, body?: unknown, timeoutMs = 30_000): Promise<Answer> {
  const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { socketPath, method, path, headers: data ? { "content-type": "application/json", "content-length": data.length } : {}, timeout: timeoutMs },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (c: Buffer) => {
          size += c.length;
          if (size > MAX_ANSWER) {
            req.destroy();
            reject(new Unavailable("server_error", "the answer is too large"));
          } else chunks.push(c);
        });
        res.on("end", () => {
          const headers: Record<string, string> = {};
          for (const [k, v] of Object.entries(res.headers)) if (typeof v === "string") headers[k.toLowerCase()] = v;
          resolve({ status: res.statusCode ?? 0, headers, body: parse(Buffer.concat(chunks).toString()) });
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", (e) => reject(new Unavailable("temporarily_unavailable", `cannot reach the agent socket: ${e.name}`)));
    if (data) req.write(data);
    req.end();
  });
}

/** A request to the broker. */
export async function request(url: string, method: string, headers: Record<string, string>, body: string | undefined, timeoutMs = 30_000): Promise<Answer> {
  let res: Response;
  try {
    res = await fetch(url, { method, headers, body, redirect: "error", signal: AbortSignal.timeout(timeoutMs) });
  } catch (e) {
    // (A header value with a line break lands here too; its message is not repeated.)
    throw new Unavailable("temporarily_unavailable", `cannot reach the broker: ${(e as Error).name}`);
  }
  const text = await res.text();
  if (text.length > MAX_ANSWER) throw new Unavailable("server_error", "the answer is too large");
  const out: Record<string, string> = {};
  res.headers.forEach((v, k) => (out[k.toLowerCase()] = v));
  return { status: res.status, headers: out, body: parse(text) };
}
