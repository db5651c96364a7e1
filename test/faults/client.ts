/**
 * The suite's API client, written like a real client: it retries a `503 service_unavailable`
 * (honouring `Retry-After`, with a cap) and a refused/timed-out connection with exponential
 * backoff, re-sends a run start with the same `Idempotency-Key`, and records the status of every
 * response it got, so a scenario can tell documented 503s from anything else.
 */
import type { RunView } from '../../contracts';

export interface Recorded {
  method: string;
  route: string;
  /** HTTP status; 0 for no response (connection refused, reset or timed out). */
  status: number;
  /** The problem's stable `code`, when the body is a problem. */
  code?: string;
  retryAfter?: string;
}

/** Documented 503s (README "Error codes" and `GET /readyz`): Temporal/issuer unreachable, or not ready. */
export function isDocumented503(r: Recorded): boolean {
  if (r.status !== 503) return false;
  if (r.route === 'GET /readyz') return true;
  return r.code === 'service_unavailable' && r.retryAfter !== undefined;
}

const TERMINAL = ['committed', 'discarded', 'failed', 'cancelled'];

export function isSettled(v: RunView): boolean {
  return TERMINAL.includes(v.status) && v.finishedAt !== undefined && v.events.published === v.events.emitted;
}

export class RecordingClient {
  readonly responses: Recorded[] = [];

  constructor(private readonly baseUrl: string) {}

  /** One request, no retries; recorded. */
  async once(
    method: string,
    path: string,
    route: string,
    opts: { token?: string; body?: unknown; key?: string } = {},
  ): Promise<{ status: number; body: unknown; retryAfter?: string }> {
    let res: Response;
    try {
      res = await fetch(`${this.baseUrl}${path}`, {
        method,
        headers: {
          ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
          ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}),
          ...(opts.key ? { 'idempotency-key': opts.key } : {}),
        },
        ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
        signal: AbortSignal.timeout(15_000),
      });
    } catch {
      this.responses.push({ method, route, status: 0 });
      return { status: 0, body: undefined };
    }
    const text = await res.text();
    let body: unknown;
    try {
      body = text ? (JSON.parse(text) as unknown) : undefined;
    } catch {
      body = text;
    }
    const code =
      typeof body === 'object' && body !== null && typeof (body as { code?: unknown }).code === 'string'
        ? (body as { code: string }).code
        : undefined;
    const retryAfter = res.headers.get('retry-after') ?? undefined;
    this.responses.push({
      method,
      route,
      status: res.status,
      ...(code ? { code } : {}),
      ...(retryAfter ? { retryAfter } : {}),
    });
    return { status: res.status, body, ...(retryAfter ? { retryAfter } : {}) };
  }

  /** Retries 503s and lost connections with backoff until `deadline` (epoch ms); other answers return. */
  async withRetry(
    method: string,
    path: string,
    route: string,
    opts: { token: string; body?: unknown; key?: string; deadline: number },
  ): Promise<{ status: number; body: unknown }> {
    let backoff = 250;
    for (;;) {
      const r = await this.once(method, path, route, opts);
      if (r.status !== 503 && r.status !== 0) return r;
      if (Date.now() > opts.deadline) return r;
      const hinted = r.retryAfter ? Number(r.retryAfter) * 1000 : NaN;
      // A real client honours Retry-After but does not wait longer than its own cap.
      const wait = Math.min(Number.isFinite(hinted) ? hinted : backoff, 5000);
      await new Promise((res) => setTimeout(res, wait));
      backoff = Math.min(backoff * 2, 5000);
    }
  }

  async startRun(token: string, body: unknown, key: string, deadline: number): Promise<RunView> {
    const r = await this.withRetry('POST', '/v1/runs', 'POST /v1/runs', { token, body, key, deadline });
    if (r.status !== 201) throw new Error(`POST /v1/runs answered ${r.status}: ${JSON.stringify(r.body)}`);
    return r.body as RunView;
  }

  /** Polls a run until it is terminal and every event it emitted is published, or `deadline`. */
  async waitSettled(runId: string, token: string, deadline: number): Promise<RunView | undefined> {
    let last: RunView | undefined;
    for (;;) {
      const r = await this.withRetry('GET', `/v1/runs/${runId}`, 'GET /v1/runs/:runId', { token, deadline });
      if (r.status === 200) {
        last = r.body as RunView;
        if (isSettled(last)) return last;
      }
      if (Date.now() > deadline) return last;
      await new Promise((res) => setTimeout(res, 1000));
    }
  }
}
