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

/** A JSON request to the `mandate exec` socket: settled once, within
 * `timeoutMs` whatever the wrapper does (a cut answer is an error). */
export function unix(socketPath: string, method: string, path: string, body?: unknown, timeoutMs = 30_000): Promise<Answer> {
  const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    let done = false;
    const settle = (f: () => void) => {
      if (!done) {
        done = true;
        clearTimeout(timer);
        f();
      }
    };
    const fail = (why: string) => settle(() => {
      req.destroy();
      reject(new Unavailable("temporarily_unavailable", `the agent socket: ${why}`));
    });
    const timer = setTimeout(() => fail("no answer in time"), timeoutMs);
    const req = httpRequest(
      { socketPath, method, path, headers: data ? { "content-type": "application/json", "content-length": data.length } : {} },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (c: Buffer) => {
          size += c.length;
          if (size > MAX_ANSWER) fail("the answer is too large");
          else chunks.push(c);
        });
        res.on("error", () => fail("the answer was cut"));
        res.on("close", () => {
          if (!res.complete) fail("the answer was cut");
        });
        res.on("end", () => settle(() => {
          const headers: Record<string, string> = {};
          for (const [k, v] of Object.entries(res.headers)) if (typeof v === "string") headers[k.toLowerCase()] = v;
          resolve({ status: res.statusCode ?? 0, headers, body: parse(Buffer.concat(chunks).toString()) });
        }));
      },
    );
    req.on("error", (e: NodeJS.ErrnoException) => fail(`cannot connect (${e.code ?? e.name})`));
    if (data) req.write(data);
    req.end();
  });
}

/** A request to the broker; at most MAX_ANSWER bytes of its answer are read. */
export async function request(url: string, method: string, headers: Record<string, string>, body: string | undefined, timeoutMs = 30_000): Promise<Answer> {
  try {
    const res = await fetch(url, { method, headers, body, redirect: "error", signal: AbortSignal.timeout(timeoutMs) });
    const chunks: Uint8Array[] = [];
    let size = 0;
    if (res.body) {
      for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) {
        size += c.length;
        if (size > MAX_ANSWER) throw new Unavailable("server_error", "the answer is too large");
        chunks.push(c);
      }
    }
    const out: Record<string, string> = {};
    res.headers.forEach((v, k) => (out[k.toLowerCase()] = v));
    return { status: res.status, headers: out, body: parse(Buffer.concat(chunks).toString()) };
  } catch (e) {
    if (e instanceof Unavailable) throw e;
    // (A header value with a line break lands here too; its message, which
    // may quote the value, is not repeated.)
    throw new Unavailable("temporarily_unavailable", `cannot reach the broker: ${(e as Error).name}`);
  }
}
