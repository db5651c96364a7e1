/**
 * `npm run bench:load`: N runs started at once through the real API process, run by the real worker
 * process (local sandbox driver, one small work item and one verifier each), loopback only.
 * Prints throughput, start and end-to-end latency percentiles, errors, and the worker's and API's
 * resident memory and CPU, and checks every run committed with gap-free events.
 *
 * Starts its own Temporal dev server, nats-server, dev issuer, worker and API
 * (CHOIROS_TEMPORAL_BIN, CHOIROS_NATS_SERVER_BIN: `npm run provision`); nothing else is touched.
 * Bounded: BENCH_LOAD_RUNS (default 200) runs, BENCH_LOAD_DEADLINE_SECONDS (default 900).
 * Modes (BENCH_LOAD_MODES, default `spread,one-tenant`, measured one after the other on one stack):
 * `spread` spreads the runs over users and tenants so the fairness caps (8 per user, 64 per tenant)
 * admit them all at once: BENCH_LOAD_USERS (default 25) users over BENCH_LOAD_TENANTS (default 5);
 * `one-tenant` sends the same runs from the same number of users of one tenant, so they queue at
 * the tenant's admission gate (issue 18, decision 0013). A summary compares their throughput.
 */
import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Client, Connection } from '@temporalio/client';
import { connect, credsAuthenticator } from 'nats';
import type { RunView } from '../../contracts';
import {
  DEV_AUDIENCE,
  loadOrCreateDevKey,
  mintDevToken,
  serveDevIssuer,
} from '../../infra/dev-issuer/issuer';
import { freePort, startEntry, waitFor, type ManagedProcess } from '../../infra/stack/process';
import { expectGapFree, readRunEvents } from '../../infra/stack/run-events';
import { ensureDockerEngine } from '../../infra/stack/docker';
import { ensureSandboxImage } from '../../infra/stack/sandbox-image';
import { writeTenantsFile } from '../../tenancy';
import { formatProfiles, summariseProfiles } from '../profile';
import { historyShape, pct, startApiProcess, startBenchStack } from '../util';

const RUNS = intEnv('BENCH_LOAD_RUNS', 200);
const USERS = intEnv('BENCH_LOAD_USERS', 25);
const TENANTS = intEnv('BENCH_LOAD_TENANTS', 5);
const DEADLINE_MS = intEnv('BENCH_LOAD_DEADLINE_SECONDS', 900) * 1000;
const MODES = (process.env.BENCH_LOAD_MODES ?? 'spread,one-tenant').split(',').map((m) => m.trim());
for (const m of MODES) {
  if (m !== 'spread' && m !== 'one-tenant') throw new Error(`BENCH_LOAD_MODES: unknown mode ${m}`);
}
type Mode = 'spread' | 'one-tenant';
const DRIVER = process.env.BENCH_LOAD_DRIVER ?? 'local';
const PROFILE = process.env.BENCH_LOAD_PROFILE === '1';
if (DRIVER !== 'local' && DRIVER !== 'docker') throw new Error(`BENCH_LOAD_DRIVER: unknown driver ${DRIVER}`);

const VERIFIERS = `version: 1
verifiers:
  - { id: V-RESULT, description: RESULT.txt is non-empty, argv: ['test', '-s', 'RESULT.txt'], timeoutSeconds: 30 }
`;

function intEnv(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name}=${raw} is not a positive integer`);
  return n;
}

const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;

/**
 * CPU seconds (user + system, including reaped child processes such as git and local sandboxes)
 * and resident bytes of one process and its live descendants (the worker's process helper, whose
 * reaped git processes count towards it), from /proc.
 */
async function procStats(
  pid: number,
): Promise<{ cpuSeconds: number; rssBytes: number; selfRssBytes: number }> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // Fields after the parenthesised command name: utime, stime, cutime, cstime are fields 14-17.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  let cpuSeconds = [11, 12, 13, 14].reduce((s, i) => s + Number(fields[i]), 0) / CLK_TCK;
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const selfRssBytes = Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0) * 1024;
  let rssBytes = selfRssBytes;
  const children = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '');
  for (const child of children.split(' ').filter(Boolean)) {
    const s = await procStats(Number(child)).catch(() => undefined); // it may have exited meanwhile
    cpuSeconds += s?.cpuSeconds ?? 0;
    rssBytes += s?.rssBytes ?? 0;
  }
  return { cpuSeconds, rssBytes, selfRssBytes };
}

/** Samples a process every 500 ms: peak RSS and CPU seconds used between start() and stop(). */
function sampler(proc: Pick<ManagedProcess, 'pid'>) {
  let peakRss = 0;
  let peakSelfRss = 0;
  let cpu0 = 0;
  let timer: NodeJS.Timeout | undefined;
  const sample = async (): Promise<number> => {
    const s = await procStats(proc.pid);
    peakRss = Math.max(peakRss, s.rssBytes);
    peakSelfRss = Math.max(peakSelfRss, s.selfRssBytes);
    return s.cpuSeconds;
  };
  return {
    async start() {
      cpu0 = await sample();
      peakRss = 0;
      peakSelfRss = 0;
      timer = setInterval(() => void sample().catch(() => undefined), 500);
    },
    async stop() {
      clearInterval(timer);
      const cpu = (await sample()) - cpu0;
      return { peakRss, peakSelfRss, cpuSeconds: cpu };
    },
    idleRss: async () => (await procStats(proc.pid)).rssBytes,
    idleSelfRss: async () => (await procStats(proc.pid)).selfRssBytes,
  };
}

const mib = (b: number): string => `${(b / 1024 / 1024).toFixed(0)} MiB`;
const msf = (x: number): string => `${x.toFixed(0)} ms`;

async function main(): Promise<void> {
  const began = performance.now();
  const left = (): number => DEADLINE_MS - (performance.now() - began);
  const say = (m: string): void => void process.stderr.write(`[bench:load] ${m}\n`);
  const stack = await startBenchStack('bench:load', VERIFIERS);
  const { work, temporal, nats, repo, verifiersFile, cleanups } = stack;
  try {
    const key = await loadOrCreateDevKey(join(work, 'issuer'));
    const issuer = await serveDevIssuer({ key, host: '127.0.0.1', port: 0 });
    cleanups.unshift(() => issuer.close());

    // The API and the worker (which re-checks grants) read the same tenants file.
    const tenantsFile = await writeTenantsFile(
      join(work, 'tenants.yaml'),
      [...Array.from({ length: TENANTS }, (_, t) => `load-t${t}`), 'load-one'],
      [`${dirname(repo)}/`],
    );
    const common = {
      ...process.env,
      CHOIROS_TENANTS_FILE: tenantsFile,
      TEMPORAL_ADDRESS: temporal.address,
      NATS_URL: nats.url,
      CHOIROS_VERIFIERS_FILE: verifiersFile,
      LOG_LEVEL: 'warn',
    };
    say(`starting the worker (${DRIVER} sandbox driver) and the API`);
    const metricsPort = await freePort();
    const worker = startEntry({
      name: 'worker',
      entry: 'worker/main.ts',
      logFile: join(work, 'worker.log'),
      // Profiles are written when the worker exits (after the measurements, on the bench's SIGTERM).
      ...(PROFILE ? { nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${join(work, 'profile')}`] } : {}),
      env: {
        ...common,
        NATS_CREDS: nats.workerCredsFile,
        CHOIROS_DATA_DIR: join(work, 'data'),
        ...(DRIVER === 'local'
          ? { CHOIROS_SANDBOX_DRIVER: 'local', CHOIROS_LOCAL_DRIVER: 'trusted-dev' }
          : { CHOIROS_SANDBOX_DRIVER: 'docker', CHOIROS_SANDBOX_IMAGE: await dockerSandboxImage(work, say) }),
        CHOIROS_HOST_ID: 'bench-load',
        CHOIROS_SWEEP_INTERVAL_SECONDS: '0',
        CHOIROS_METRICS_PORT: String(metricsPort),
        LOG_LEVEL: 'info',
      },
    });
    cleanups.unshift(() => worker.stop(30_000));
    const { url: apiUrl, proc: api } = await startApiProcess(stack, {
      issuer: issuer.issuer,
      audience: DEV_AUDIENCE,
      tenantsFile,
    });
    await waitFor(
      'worker',
      async () => (await readFile(worker.logFile, 'utf8')).includes('"worker.started"'),
      { timeoutMs: 180_000, proc: worker },
    );
    const connection = await Connection.connect({ address: temporal.address });
    cleanups.unshift(() => connection.close());
    const client = new Client({ connection });
    const reader = await connect({
      servers: nats.url,
      authenticator: credsAuthenticator(await readFile(nats.apiCredsFile)),
    });
    cleanups.unshift(() => reader.drain());

    const tokensOf = (mode: Mode) =>
      Promise.all(
        Array.from({ length: USERS }, (_, u) =>
          mintDevToken(
            key,
            { issuer: issuer.issuer, audience: DEV_AUDIENCE },
            {
              sub: `load-u${u}`,
              tenant: mode === 'spread' ? `load-t${u % TENANTS}` : 'load-one',
              ttlSeconds: 3600,
            },
          ),
        ),
      );
    let tokens = await tokensOf('spread');
    const body = (i: number) => ({
      repo,
      baseRef: 'main',
      mood: 'CALM',
      workItem: {
        description: `load run ${i}`,
        execute: ['sh', '-c', `echo ${i} > RESULT.txt`],
        requiredVerifiers: ['V-RESULT'],
        riskTier: 'low',
      },
    });
    const start = async (i: number, tag: string) => {
      const t = performance.now();
      const res = await fetch(`${apiUrl}/v1/runs`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${tokens[Math.abs(i) % USERS]}`,
          'content-type': 'application/json',
          'idempotency-key': `${tag}-${i}`,
        },
        body: JSON.stringify(body(i)),
      });
      const text = await res.text();
      return { i, status: res.status, ms: performance.now() - t, text, at: performance.now() };
    };

    // Warm-up: one run end to end (first bundle load, first connections), not counted.
    const warm = await start(-1, 'warm');
    if (warm.status !== 201) throw new Error(`warm-up start answered ${warm.status}: ${warm.text}`);
    await client.workflow.getHandle((JSON.parse(warm.text) as RunView).runId).result();

    const measure = async (
      mode: Mode,
    ): Promise<{
      mode: Mode;
      runsPerS: number;
      e2e: number[];
      errors: number;
      events: number;
      peakSelfRss: number;
    }> => {
      tokens = await tokensOf(mode);
      const workerStats = sampler(worker);
      const apiStats = sampler(api);
      const temporalStats = sampler(temporal.process);
      const idleWorkerRss = await workerStats.idleRss();
      const idleWorkerSelfRss = await workerStats.idleSelfRss();
      await workerStats.start();
      // The worker's main-thread heap from its /metrics (prom-client defaults): what of its RSS is V8.
      const heap = { used: 0, total: 0, external: 0 };
      const heapTimer = setInterval(() => {
        void fetch(`http://127.0.0.1:${metricsPort}/metrics`)
          .then((r) => r.text())
          .then((text) => {
            const v = (name: string): number =>
              Number(new RegExp(`^choiros_worker_${name} (\\S+)`, 'm').exec(text)?.[1] ?? 0);
            heap.used = Math.max(heap.used, v('nodejs_heap_size_used_bytes'));
            heap.total = Math.max(heap.total, v('nodejs_heap_size_total_bytes'));
            heap.external = Math.max(heap.external, v('nodejs_external_memory_bytes'));
          })
          .catch(() => undefined);
      }, 2000);
      await apiStats.start();
      await temporalStats.start();
      const shape =
        mode === 'spread' ? `${USERS} users over ${TENANTS} tenants` : `${USERS} users of one tenant`;
      say(`${mode}: starting ${RUNS} runs at once (${shape})`);
      const t0 = performance.now();
      const starts = await Promise.all(Array.from({ length: RUNS }, (_, i) => start(i, `load-${mode}`)));
      const startErrors = starts.filter((s) => s.status !== 201);
      const accepted = starts.filter((s) => s.status === 201);
      const finished: { i: number; runId: string; e2eMs: number; view: RunView }[] = [];
      let resultErrors = 0;
      await Promise.all(
        accepted.map(async (s) => {
          const runId = (JSON.parse(s.text) as RunView).runId;
          try {
            const view = await Promise.race([
              client.workflow.getHandle(runId).result() as Promise<RunView>,
              new Promise<never>((_, reject) =>
                setTimeout(() => reject(new Error('deadline')), Math.max(1000, left())).unref(),
              ),
            ]);
            finished.push({ i: s.i, runId, e2eMs: performance.now() - t0, view });
            if (finished.length % 25 === 0) say(`${finished.length}/${RUNS} runs finished`);
          } catch (err) {
            resultErrors += 1;
            say(`run ${runId}: ${err instanceof Error ? err.message : String(err)}`);
          }
        }),
      );
      const elapsedS = (performance.now() - t0) / 1000;
      clearInterval(heapTimer);
      const w = await workerStats.stop();
      const a = await apiStats.stop();
      const tp = await temporalStats.stop();

      // Every run committed, and its events are all in JetStream, numbered 1..n, each once.
      const notCommitted = finished.filter((f) => f.view.status !== 'committed');
      let eventErrors = 0;
      let events = 0;
      for (const f of finished) {
        const userId = `load-u${f.i % USERS}`;
        const view = await fetch(`${apiUrl}/v1/runs/${f.runId}`, {
          headers: { authorization: `Bearer ${tokens[f.i % USERS]}` },
        }).then((r) => r.json() as Promise<RunView>);
        const tenant = mode === 'spread' ? `load-t${(f.i % USERS) % TENANTS}` : 'load-one';
        const got = await readRunEvents(reader, { tenant, userId }, f.runId);
        try {
          expectGapFree(got);
          if (got.length !== view.events.emitted) throw new Error(`${got.length} of ${view.events.emitted}`);
          events += got.length;
        } catch (err) {
          eventErrors += 1;
          say(`run ${f.runId} events: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
      const history = await historyShape(
        client,
        finished.map((f) => f.runId),
      );
      const metrics = await fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.text());
      const committedByWorker = /^choiros_runs_completed_total\{status="committed"\} (\d+)/m.exec(
        metrics,
      )?.[1];

      const startMs = starts.map((s) => s.ms);
      const e2e = finished.map((f) => f.e2eMs);
      const errors = startErrors.length + resultErrors + notCommitted.length + eventErrors;
      console.log(
        `\nbench:load ${mode}: ${RUNS} runs at once through POST /v1/runs (${shape}; ${DRIVER} driver; 1 work item + 1 verifier each)`,
      );
      console.log(
        `  completed      ${finished.length - notCommitted.length}/${RUNS} committed in ${elapsedS.toFixed(1)} s  → ${(finished.length / elapsedS).toFixed(2)} runs/s`,
      );
      console.log(
        `  errors         ${errors} (start non-201: ${startErrors.length}, not finished: ${resultErrors}, not committed: ${notCommitted.length}, event gaps: ${eventErrors})`,
      );
      for (const f of notCommitted.slice(0, 5))
        console.log(`  not committed: ${f.runId} ${f.view.status} ${JSON.stringify(f.view.error ?? null)}`);
      if (startErrors.length > 0)
        console.log(`  first start error: ${startErrors[0]?.status} ${startErrors[0]?.text.slice(0, 300)}`);
      console.log(
        `  start latency  p50 ${msf(pct(startMs, 50))}  p95 ${msf(pct(startMs, 95))}  p99 ${msf(pct(startMs, 99))}  max ${msf(Math.max(...startMs))}`,
      );
      console.log(
        `  end to end     p50 ${msf(pct(e2e, 50))}  p95 ${msf(pct(e2e, 95))}  p99 ${msf(pct(e2e, 99))}  max ${msf(Math.max(...e2e))}`,
      );
      console.log(
        `  history        ${history.events.length} runs: events per run p50 ${pct(history.events, 50)}, max ${Math.max(...history.events)}; sandbox ready (sandbox step scheduled → completed) p50 ${msf(pct(history.sandboxReadyMs, 50))}, p95 ${msf(pct(history.sandboxReadyMs, 95))}`,
      );
      console.log(
        `  worker process RSS idle ${mib(idleWorkerSelfRss)}, peak ${mib(w.peakSelfRss)} (the Node process alone); main-thread V8 heap peak ${mib(heap.used)} used of ${mib(heap.total)}, external ${mib(heap.external)}`,
      );
      console.log(
        `  worker tree    RSS idle ${mib(idleWorkerRss)}, peak ${mib(w.peakRss)}; CPU ${w.cpuSeconds.toFixed(1)} s = ${(w.cpuSeconds / elapsedS).toFixed(2)} cores on average (incl. git and sandbox processes)`,
      );
      console.log(
        `  temporal       RSS peak ${mib(tp.peakRss)}; CPU ${tp.cpuSeconds.toFixed(1)} s = ${(tp.cpuSeconds / elapsedS).toFixed(2)} cores on average (dev server)`,
      );
      console.log(
        `  api            RSS peak ${mib(a.peakRss)}; CPU ${a.cpuSeconds.toFixed(1)} s = ${(a.cpuSeconds / elapsedS).toFixed(2)} cores on average`,
      );
      console.log(
        `  events         ${events} read back from JetStream, gap- and duplicate-free per run; worker /metrics counted ${committedByWorker ?? '?'} committed runs (incl. warm-up)`,
      );
      console.log(
        `  machine        ${cpus().length} cores, load average at the end ${loadavg()
          .map((l) => l.toFixed(1))
          .join(' ')}`,
      );
      return {
        mode,
        runsPerS: finished.length / elapsedS,
        e2e,
        errors,
        events: pct(history.events, 50),
        peakSelfRss: w.peakSelfRss,
      };
    };

    const results = [];
    for (const mode of MODES as Mode[]) results.push(await measure(mode));
    console.log(`\nbench:load summary (${RUNS} runs each; caps 8 per user, 64 per tenant)`);
    for (const r of results) {
      console.log(
        `  ${r.mode.padEnd(10)}  ${r.runsPerS.toFixed(2)} runs/s  end to end p50 ${msf(pct(r.e2e, 50))}  p95 ${msf(pct(r.e2e, 95))}  history events p50 ${r.events}  worker peak RSS ${mib(r.peakSelfRss)}  errors ${r.errors}`,
      );
    }
    if (PROFILE) {
      say('stopping the worker to collect its CPU profiles');
      await worker.stop(60_000);
      const runs = RUNS * results.length + 1;
      console.log(`\nworker CPU profile (${runs} runs incl. warm-up; start-up and drain included)`);
      for (const line of formatProfiles(await summariseProfiles(join(work, 'profile')), runs))
        console.log(line);
    }
    if (results.some((r) => r.errors > 0)) process.exitCode = 1;
  } finally {
    await stack.stop();
  }
}

/** The sandbox image for BENCH_LOAD_DRIVER=docker: the engine started if needed, the image built once. */
async function dockerSandboxImage(work: string, say: (m: string) => void): Promise<string> {
  const engine = await ensureDockerEngine({
    dataRoot: process.env.CHOIROS_DOCKER_DATA_ROOT ?? '/var/lib/choiros-docker',
    logDir: work,
  });
  const img = await ensureSandboxImage({
    docker: engine.docker,
    repoRoot: join(__dirname, '../..'),
    busybox: process.env.CHOIROS_BUSYBOX || '/bin/busybox',
    log: (line) => say(line),
  });
  return img.image;
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
