/** HTTP health probe on a loopback port: 200, and the commit in the body when the check asks for it. */
import { request } from 'node:http';

export function probe(
  port: number,
  path: string,
  timeoutMs: number,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method: 'GET', timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        if (body.length < 64 * 1024) body += c;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('health probe timed out')));
    req.on('error', reject);
    req.end();
  });
}

/** Polls until healthy or the deadline; the last failure is the detail. */
export async function waitHealthy(opts: {
  port: number;
  path: string;
  expect?: string;
  timeoutMs: number;
  signal?: AbortSignal;
  onAttempt?: (detail: string) => void;
}): Promise<{ healthy: boolean; detail: string; durationMs: number }> {
  const started = Date.now();
  let detail = 'no answer';
  while (Date.now() - started < opts.timeoutMs && !opts.signal?.aborted) {
    try {
      const r = await probe(opts.port, opts.path, 2000);
      if (r.status === 200 && (!opts.expect || r.body.includes(opts.expect)))
        return { healthy: true, detail: `200 ${r.body.slice(0, 200)}`, durationMs: Date.now() - started };
      detail =
        r.status === 200
          ? `answered without version ${opts.expect ?? ''}: ${r.body.slice(0, 200)}`
          : `HTTP ${r.status} ${r.body.slice(0, 200)}`;
    } catch (err) {
      detail = err instanceof Error ? err.message : String(err);
    }
    opts.onAttempt?.(detail);
    await new Promise((r) => setTimeout(r, 300));
  }
  return { healthy: false, detail, durationMs: Date.now() - started };
}
