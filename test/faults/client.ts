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

/** What an SSE client following one run saw, across its reconnects. */
export interface SseFollow {
  runId: string;
  /** Event seqs in the order they arrived (a repeat or a gap is a failure). */
  seqs: number[];
  /** Connections made (1 when the stream never broke). */
  connections: number;
  /** `event: error` frames the API sent before ending a stream. */
  errors: number;
  /** The longest wait between two events (or the start and the first). */
  longestGapMs: number;
  completed: boolean;
}

/** One SSE frame's fields (`id`, `event`, `data`); comments (`: ping`) give none. */
function parseFrame(frame: string): { id?: string; event?: string; data?: string } {
  const out: { id?: string; event?: string; data?: string } = {};
  for (const line of frame.split('\n')) {
    const m = /^(id|event|data): ?(.*)$/.exec(line);
    if (m) out[m[1] as 'id' | 'event' | 'data'] = m[2];
  }
  return out;
}

/**
 * Follows a run's events over SSE like a browser's EventSource: on a stream that ends, breaks or
 * sends `event: error` it reconnects after 2 s (the stream's `retry`) with `Last-Event-ID`, until
 * `run.completed` or `deadline`. The response status of every connection is recorded (headers must
 * come within 15 s, like any request); the stream itself may stay quiet for as long as it likes.
 */
export async function followEvents(
  client: RecordingClient,
  baseUrl: string,
  runId: string,
  token: string,
  deadline: number,
): Promise<SseFollow> {
  const f: SseFollow = { runId, seqs: [], connections: 0, errors: 0, longestGapMs: 0, completed: false };
  let lastId: string | undefined;
  let lastAt = Date.now();
  const route = 'GET /v1/runs/:runId/events';
  while (!f.completed && Date.now() < deadline) {
    const abort = new AbortController();
    const headersBy = setTimeout(() => abort.abort(), 15_000);
    const untilDeadline = setTimeout(() => abort.abort(), Math.max(0, deadline - Date.now()));
    let answered = false;
    try {
      const res = await fetch(`${baseUrl}/v1/runs/${runId}/events`, {
        headers: {
          authorization: `Bearer ${token}`,
          accept: 'text/event-stream',
          ...(lastId ? { 'last-event-id': lastId } : {}),
        },
        signal: abort.signal,
      });
      clearTimeout(headersBy);
      answered = true;
      f.connections += 1;
      if (res.status !== 200 || !res.body) {
        const text = await res.text().catch(() => '');
        let code: string | undefined;
        try {
          code = (JSON.parse(text) as { code?: string }).code;
        } catch {
          /* not a problem body */
        }
        const retryAfter = res.headers.get('retry-after') ?? undefined;
        client.responses.push({
          method: 'GET',
          route,
          status: res.status,
          ...(code ? { code } : {}),
          ...(retryAfter ? { retryAfter } : {}),
        });
      } else {
        client.responses.push({ method: 'GET', route, status: 200 });
        const decoder = new TextDecoder();
        let buf = '';
        const reader = res.body.getReader();
        reading: for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true });
          let cut: number;
          while ((cut = buf.indexOf('\n\n')) >= 0) {
            const frame = parseFrame(buf.slice(0, cut));
            buf = buf.slice(cut + 2);
            if (frame.event === 'error') {
              f.errors += 1;
              await reader.cancel().catch(() => undefined);
              break reading;
            }
            if (frame.id === undefined || frame.data === undefined) continue;
            const event = JSON.parse(frame.data) as { seq: number; event_type: string };
            const now = Date.now();
            f.longestGapMs = Math.max(f.longestGapMs, now - lastAt);
            lastAt = now;
            lastId = frame.id;
            f.seqs.push(event.seq);
            if (event.event_type === 'run.completed') {
              f.completed = true;
              await reader.cancel().catch(() => undefined);
              break reading;
            }
          }
        }
      }
    } catch {
      // No headers in 15 s is a request without an answer; a stream cut later is a reconnect.
      if (!answered && Date.now() < deadline) client.responses.push({ method: 'GET', route, status: 0 });
    } finally {
      clearTimeout(headersBy);
      clearTimeout(untilDeadline);
    }
    if (!f.completed) await new Promise((r) => setTimeout(r, 2000));
  }
  return f;
}
