/** HTTP and JetStream helpers for tests that drive runs through the real API. */
import { execFileSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeJwt } from 'jose';
import type { RunView } from '../../contracts';
export { expectGapFree, readRunEvents } from '../../infra/stack/run-events';
import { ROOT, env, poll, type TestApi } from './integration';

export interface ApiCall<T = unknown> {
  status: number;
  body: T;
}

/** A client of one test API, acting with tokens it mints. */
export function apiClient(api: Pick<TestApi, 'url'>) {
  const call = async <T>(
    method: string,
    path: string,
    opts: { token: string; body?: unknown; key?: string },
  ): Promise<ApiCall<T>> => {
    const res = await fetch(`${api.url}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${opts.token}`,
        ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(opts.key ? { 'idempotency-key': opts.key } : {}),
      },
      ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
    });
    const text = await res.text();
    return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T };
  };
  return {
    call,
    getRun: (runId: string, token: string) => call<RunView>('GET', `/v1/runs/${runId}`, { token }),
    /** Polls until the run is terminal and every event it emitted is published. */
    async waitTerminal(runId: string, token: string, timeoutMs = 120_000): Promise<RunView> {
      const r = await poll(
        () => call<RunView>('GET', `/v1/runs/${runId}`, { token }),
        (v) =>
          ['committed', 'discarded', 'failed', 'cancelled'].includes(v.body.status) &&
          v.body.events.published === v.body.events.emitted,
        timeoutMs,
      );
      return r.body;
    },
    async waitStatus(runId: string, token: string, status: string, timeoutMs = 60_000): Promise<RunView> {
      const r = await poll(
        () => call<RunView>('GET', `/v1/runs/${runId}`, { token }),
        (v) => v.body.status === status,
        timeoutMs,
      );
      return r.body;
    },
  };
}

/** The token id (jti) of a token, as the run records its approver. */
export function tokenId(token: string): string {
  return String(decodeJwt(token).jti);
}

/**
 * With CHOIROS_RECORD_HISTORIES=1, saves a workflow's history (its latest run, or `runId`) as a
 * replay fixture (test/fixtures/histories/<name>.json), which the replay test runs in every
 * `npm test`. The CLI's JSON export is the format the SDK replayer reads.
 */
export async function recordHistory(workflowId: string, name: string, runId?: string): Promise<void> {
  if (process.env.CHOIROS_RECORD_HISTORIES !== '1') return;
  const json = execFileSync(
    process.env.CHOIROS_TEMPORAL_BIN ?? 'temporal',
    [
      'workflow',
      'show',
      '--workflow-id',
      workflowId,
      ...(runId ? ['--run-id', runId] : []),
      '--output',
      'json',
      '--address',
      env.temporalAddress(),
    ],
    { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 },
  );
  await writeFile(join(ROOT, 'test/fixtures/histories', `${name}.json`), json);
}
