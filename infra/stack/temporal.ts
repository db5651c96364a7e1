/** Starts the Temporal CLI dev server with the project's search attributes registered. */
import { join } from 'node:path';
import { SEARCH_ATTRIBUTE_NAMES } from '../../contracts';
import { startProcess, portOpen, waitFor, type ManagedProcess } from './process';

/**
 * Server settings the platform relies on: flags of the dev server here, and the compose stack's
 * dynamic-config file (infra/compose/temporal-dynamic-config.yaml) holds the same values.
 *
 * `history.maxBufferedQueryCount`: how many queries the server holds behind a workflow's pending
 * workflow task (default 1). A run joins its tenant's admission gate by signal plus query
 * (decision 0015); with the default, a burst of joins has all but one query refused and each of those
 * runs falls back to waiting for the gate's signal, which puts seconds on the run's first workflow
 * task. A refused query costs nothing to keep; a buffered one is answered with the gate's next task.
 */
export const TEMPORAL_DYNAMIC_CONFIG: Readonly<Record<string, number | boolean | string>> = {
  'history.MaxBufferedQueryCount': 1000,
};

export interface TemporalDevServer {
  address: string;
  uiUrl?: string;
  process: ManagedProcess;
}

export async function startTemporalDevServer(opts: {
  binary: string;
  host: string;
  port: number;
  uiPort?: number;
  /** SQLite file so state survives restarts; omit for an in-memory server (tests). */
  dbFile?: string;
  logDir: string;
  namespace: string;
}): Promise<TemporalDevServer> {
  const args = ['server', 'start-dev', '--ip', opts.host, '--port', String(opts.port), '--log-level', 'warn'];
  if (opts.uiPort) args.push('--ui-ip', opts.host, '--ui-port', String(opts.uiPort));
  else args.push('--headless');
  if (opts.dbFile) args.push('--db-filename', opts.dbFile);
  if (opts.namespace !== 'default') args.push('--namespace', opts.namespace);
  for (const name of SEARCH_ATTRIBUTE_NAMES) args.push('--search-attribute', `${name}=Keyword`);
  for (const [key, value] of Object.entries(TEMPORAL_DYNAMIC_CONFIG)) {
    args.push('--dynamic-config-value', `${key}=${JSON.stringify(value)}`);
  }
  const proc = startProcess({
    name: 'temporal',
    command: opts.binary,
    args,
    logFile: join(opts.logDir, 'temporal.log'),
  });
  await waitFor('Temporal dev server', () => portOpen(opts.host, opts.port), { timeoutMs: 90_000, proc });
  if (opts.uiPort) {
    const uiPort = opts.uiPort;
    await waitFor('Temporal Web UI', () => portOpen(opts.host, uiPort), { timeoutMs: 60_000, proc });
  }
  return {
    address: `${opts.host}:${opts.port}`,
    uiUrl: opts.uiPort
      ? `http://${opts.host === '0.0.0.0' ? 'localhost' : opts.host}:${opts.uiPort}`
      : undefined,
    process: proc,
  };
}
