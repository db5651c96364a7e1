/**
 * Worker configuration: parsed once from the environment at start. Each key's `.describe()` text is
 * its documentation: docs/configuration.md is generated from it (`npm run docs:gen`).
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { tracingConfigShape } from '../telemetry/tracing';
import { checkConnectionTls, connectionTlsShape } from '../infra/tls/connections';
import { DEFAULT_TENANTS_FILE } from '../tenancy/load';

const hostIdDefault = (): string =>
  hostname()
    .replace(/[^A-Za-z0-9_-]/g, '-')
    .slice(0, 40) || 'local';

/** A comma-separated list of CIDRs (a bare address is its /32 or /128), parsed into an array. */
const cidrList = z
  .string()
  .default('')
  .transform((s) =>
    s
      .split(',')
      .map((c) => c.trim())
      .filter(Boolean),
  )
  .refine(
    (list) =>
      list.every((c) => {
        const [addr = '', bits, extra] = c.split('/');
        const family = isIP(addr);
        const max = family === 4 ? 32 : 128;
        return (
          family !== 0 &&
          extra === undefined &&
          (bits === undefined || (/^[0-9]{1,3}$/.test(bits) && Number(bits) <= max))
        );
      }),
    'must be comma-separated CIDRs (a.b.c.d/n or x:y::/n)',
  );

export const workerConfigSchema = z.object({
  TEMPORAL_ADDRESS: z
    .string()
    .min(1)
    .default('127.0.0.1:7233')
    .describe('Temporal frontend address (host:port)'),
  TEMPORAL_NAMESPACE: z.string().min(1).default('default').describe('Temporal namespace'),
  NATS_URL: z
    .string()
    .min(1)
    .default('nats://127.0.0.1:4222')
    .describe('NATS server URL(s), comma-separated'),
  NATS_CREDS: z
    .string()
    .optional()
    .describe(
      "The worker's NATS credentials file (JWT + nkey seed; they may publish and use JetStream); unset for an open server",
    ),
  NATS_PING_INTERVAL_SECONDS: z.coerce
    .number()
    .int()
    .min(1)
    .max(600)
    .default(20)
    .describe(
      "Seconds between the client's PINGs to NATS; two unanswered in a row and the connection counts as dead and is replaced (a NATS that stops answering without closing: reliability.md `nats-partition`). nats.js's own default, 120, left a dead connection in TCP's retransmission backoff for minutes after the network healed",
    ),
  CHOIROS_DATA_DIR: z
    .string()
    .min(1)
    .default('.data')
    .describe('Worktrees (`<dir>/worktrees/<runId>`), mirrors and other worker state'),
  CHOIROS_ARTIFACTS_DIR: z
    .string()
    .min(1)
    .optional()
    .describe(
      'Content-addressed artifact store (command logs, verifier reports); unset: `<CHOIROS_DATA_DIR>/artifacts`',
    ),
  CHOIROS_MAX_LOG_BYTES: z.coerce
    .number()
    .int()
    .min(1024)
    .max(1024 * 1024 * 1024)
    .default(64 * 1024 * 1024)
    .describe(
      "Bytes of one command's output kept in the artifact store; beyond it output is hashed and counted only",
    ),
  CHOIROS_VERIFIERS_FILE: z
    .string()
    .min(1)
    .default('infra/verifiers.yaml')
    .describe("The verifier allow-list (YAML): platform configuration, never read from a run's worktree"),
  CHOIROS_SANDBOX_DRIVER: z
    .enum(['docker', 'local'])
    .default('docker')
    .describe(
      'Sandbox driver: `docker` (containers), or `local` (host child processes, much weaker isolation: see [reference.md](reference.md#operations))',
    ),
  CHOIROS_SANDBOX_IMAGE: z
    .string()
    .min(1)
    .default('choiros-sandbox:local')
    .describe('Image sandboxes run in'),
  CHOIROS_HOST_ID: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,40}$/)
    .default(hostIdDefault)
    .meta({
      description: "This host's id: names the host-specific sandbox task queue `choiros-sandbox-<id>`",
      docDefault: 'the host name',
    }),
  CHOIROS_SANDBOX_USER: z
    .string()
    .regex(/^[1-9][0-9]*:[1-9][0-9]*$/, 'must be uid:gid, not root')
    .default('10001:10001')
    .describe('uid:gid sandbox processes run as (never root)'),
  CHOIROS_SANDBOX_MEMORY_MB: z.coerce
    .number()
    .int()
    .min(16)
    .max(65536)
    .default(512)
    .describe('Memory limit per sandbox container in MiB (no swap beyond it)'),
  CHOIROS_SANDBOX_CPUS: z.coerce
    .number()
    .min(0.1)
    .max(64)
    .default(1)
    .describe('CPU limit per sandbox container (cores, fractions allowed)'),
  CHOIROS_WORKSPACE_QUOTA_MB: z.coerce
    .number()
    .int()
    .min(0)
    .max(1_048_576)
    .default(1024)
    .describe(
      "Size of each run's own filesystem (its tree) in MiB; `0` turns the per-run quota off. Needs a root worker",
    ),
  CHOIROS_WORKSPACE_MAX_ENTRIES: z.coerce
    .number()
    .int()
    .min(100)
    .max(10_000_000)
    .default(100_000)
    .describe(
      "Most entries (files, links, directories) a run's tree may hold when the host reads it (else `workspace_too_large`)",
    ),
  CHOIROS_DISK_MIN_FREE_MB: z.coerce
    .number()
    .int()
    .min(0)
    .max(1_048_576)
    .default(64)
    .describe(
      'The data disk counts as full under this many free MiB: a host step failing then fails `host_disk_full` (decision 0023)',
    ),
  CHOIROS_DISK_FULL_WAIT_SECONDS: z.coerce
    .number()
    .int()
    .min(0)
    .max(3600)
    .default(60)
    .describe(
      'How long a host step that ran out of disk space waits for space to come back before the run fails `host_disk_full` (decision 0023)',
    ),
  CHOIROS_GIT_LOCK_STALE_SECONDS: z.coerce
    .number()
    .int()
    .min(5)
    .max(86_400)
    .default(60)
    .describe(
      'A git lock file (`index.lock`, `<ref>.lock`, …) older than this that no live process holds is stale and removed ([reliability.md](reliability.md))',
    ),
  CHOIROS_WORKSPACE_MAX_BYTES: z.coerce
    .number()
    .int()
    .min(1024 * 1024)
    .max(1024 * 1024 * 1024 * 1024)
    .default(512 * 1024 * 1024)
    .describe(
      "Most bytes of file content a run's tree may hold when the host reads it (else `workspace_too_large`)",
    ),
  CHOIROS_MIRROR_MAX_BYTES: z.coerce
    .number()
    .int()
    .min(1024 * 1024)
    .max(1024 * 1024 * 1024 * 1024)
    .default(2 * 1024 * 1024 * 1024)
    .describe(
      "Most bytes one tenant's mirror of a remote (https) repository may hold after a fetch (else `repo_too_large`; decision 0019)",
    ),
  CHOIROS_MIRROR_TIMEOUT_SECONDS: z.coerce
    .number()
    .int()
    .min(5)
    .max(7200)
    .default(600)
    .describe(
      'Bound of one fetch from or push to a remote repository, in seconds ([remote-repositories.md](remote-repositories.md))',
    ),
  CHOIROS_LOCAL_DRIVER: z
    .enum(['refuse', 'trusted-dev'])
    .default('refuse')
    .describe(
      'The local driver runs work items as host processes, for trusted development only: `CHOIROS_SANDBOX_DRIVER=local` refuses to start unless this is `trusted-dev`',
    ),
  CHOIROS_SANDBOX_PIDS: z.coerce
    .number()
    .int()
    .min(8)
    .max(65536)
    .default(256)
    .describe('Process limit per sandbox container'),
  CHOIROS_SANDBOX_POOL_SIZE: z.coerce
    .number()
    .int()
    .min(0)
    .max(64)
    .default(0)
    .describe(
      "Warm sandbox pool (decision 0016): execution-lane containers kept made and started, each over a prepared workspace slot, so a run's sandbox is ready without a cold create; `0` turns it off. This is the shared lane: runs with network policy `none` of tenants without secrets (Docker driver); `CHOIROS_SANDBOX_POOL_LANES` adds lanes for tenants with secrets",
    ),
  CHOIROS_SANDBOX_POOL_LANES: z
    .string()
    .default('')
    .transform((s) =>
      s
        .split(',')
        .map((e) => e.trim())
        .filter(Boolean)
        .map((e) => e.split(':')),
    )
    .refine(
      (entries) =>
        entries.every(
          ([tenant = '', size = '', ...rest]) =>
            rest.length === 0 &&
            /^[A-Za-z0-9_-]{1,64}$/.test(tenant) &&
            /^([0-9]|[1-5][0-9]|6[0-4])$/.test(size),
        ),
      'must be tenant:size entries (size 0-64), comma-separated',
    )
    .transform((entries) => Object.fromEntries(entries.map(([t = '', n = '0']) => [t, Number(n)])))
    .describe(
      "Pool lanes of tenants with secrets, `tenant:size` comma-separated (e.g. `acme:2,globex:1`): a tenant lane's containers hold that tenant's secrets and serve only its runs; runs of tenants with secrets but no lane get a cold lane. Empty: no tenant lanes",
    ),
  CHOIROS_SANDBOX_POOL_REFILL: z.coerce
    .number()
    .int()
    .min(1)
    .max(16)
    .default(2)
    .describe('Pool slots made at the same time while the pool refills in the background'),
  CHOIROS_WORKFLOW_TASK_SLOTS: z.coerce
    .number()
    .int()
    .min(2)
    .max(10_000)
    .default(1000)
    .describe(
      "Workflow tasks the orchestration worker holds at once (the SDK's `maxConcurrentWorkflowTaskExecutions`, default there 40). A run's first task holds its slot while it joins its tenant's admission gate, and the gate needs a slot to answer: with fewer slots than runs joining at once, the gate waits until joins give up and fall back to signals (decision 0015, addendum). A held slot costs a little memory, no CPU",
    ),
  CHOIROS_WORKFLOW_THREADS: z.coerce
    .number()
    .int()
    .min(1)
    .max(8)
    .default(1)
    .describe(
      "Threads that run workflow code (the SDK's `workflowThreadPoolSize`). Each holds one reused V8 context with its own copy of the workflow bundle (~50 MiB); a run stays on the thread that started it. More than 1 spreads workflow tasks over more cores (docs/benchmarks.md)",
    ),
  CHOIROS_EVENTS_MAX_AGE_DAYS: z.coerce
    .number()
    .int()
    .min(1)
    .max(3650)
    .default(30)
    .describe('Retention of the JetStream event stream: the oldest event kept, in days'),
  CHOIROS_EVENTS_MAX_BYTES: z.coerce
    .number()
    .int()
    .min(1024 * 1024)
    .default(10 * 1024 * 1024 * 1024)
    .describe('Size bound of the event stream, in bytes'),
  CHOIROS_SANDBOX_SECRETS: z
    .string()
    .default('')
    .describe(
      "Platform-wide execution-lane secrets (every tenant's), by reference: `NAME=env:VAR` (the worker's variable VAR) or `NAME=file:/path`, comma-separated. Values reach only execution-lane containers as `NAME`; never the verifier lane, logs or events. Per-tenant secrets go in the tenants file",
    ),
  CHOIROS_EGRESS_ALLOW_CIDRS: cidrList.describe(
    "Egress proxy ([egress.md](egress.md)): CIDRs (`a.b.c.d/n`, IPv6 too; a bare address is its /32 or /128) a run's proxy may connect to although they are not public addresses, comma-separated. Trusted platform configuration for a known internal service or a test target; empty lets out public addresses only",
  ),
  CHOIROS_EGRESS_DENY_CIDRS: cidrList.describe(
    "CIDRs every egress proxy refuses even when public or allowed. Set it to the Docker host's own public addresses: the proxy reaches the internet through the host, so a name resolving to one of them would otherwise reach services the host exposes there. The `choiros-egress` gateway is always added",
  ),
  CHOIROS_EGRESS_RATE_PER_SECOND: z.coerce
    .number()
    .int()
    .min(1)
    .max(10_000)
    .default(50)
    .describe(
      "Sustained egress attempts per second one run's proxy decides on (bursts of twice that); more are `rate_limited`",
    ),
  CHOIROS_EGRESS_MAX_ATTEMPTS: z.coerce
    .number()
    .int()
    .min(1)
    .max(1_000_000)
    .default(1000)
    .describe("Egress attempts one run's proxy decides on in its life; more are `rate_limited`"),
  CHOIROS_SWEEP_INTERVAL_SECONDS: z.coerce
    .number()
    .int()
    .min(0)
    .max(86400)
    .default(300)
    .describe(
      'Seconds between orphan sweeps (containers and worktrees of finished or unknown runs; also once at start); `0` turns the sweeper off',
    ),
  CHOIROS_SWEEP_GRACE_SECONDS: z.coerce
    .number()
    .int()
    .min(0)
    .max(7 * 86400)
    .default(600)
    .describe('Orphans younger than this many seconds are left alone'),
  CHOIROS_TENANTS_FILE: z
    .string()
    .min(1)
    .default(DEFAULT_TENANTS_FILE)
    .describe(
      'The tenants file (YAML, [tenancy.md](tenancy.md)), validated at start: repository grants (re-checked before a sandbox is created) and per-tenant caps, which override `CHOIROS_MAX_RUNS_PER_USER` and `CHOIROS_MAX_RUNS_PER_TENANT`',
    ),
  CHOIROS_MAX_RUNS_PER_USER: z.coerce
    .number()
    .int()
    .min(1)
    .max(10_000)
    .default(8)
    .describe(
      "Runs of one user in flight at once (fairness) unless the tenant's caps say otherwise; more wait as `queued`, in order",
    ),
  CHOIROS_MAX_RUNS_PER_TENANT: z.coerce
    .number()
    .int()
    .min(1)
    .max(100_000)
    .default(64)
    .describe(
      "Runs of one tenant in flight at once unless the tenant's caps say otherwise; more wait as `queued`",
    ),
  CHOIROS_ADMISSION_TIMEOUT_SECONDS: z.coerce
    .number()
    .int()
    .min(1)
    .max(7 * 86400)
    .default(21_600)
    .describe(
      'Longest a run waits for admission (queued), in seconds; then it fails with `admission_timeout`',
    ),
  CHOIROS_BUILD_ID: z
    .string()
    .regex(/^[A-Za-z0-9._-]{1,64}$/)
    .default('dev')
    .describe(
      "Build id of this worker's code (the commit a rebuild deployed it from; `dev` otherwise). Stamped on every workflow task it completes, so a history shows which build ran each step across a swap; also `service.version` of its spans",
    ),
  CHOIROS_REBUILD_REGISTRY: z
    .string()
    .regex(/^[a-z0-9.-]+(:[0-9]{1,5})?(\/[a-z0-9._-]+)*$/)
    .optional()
    .describe(
      'Registry (host[:port][/prefix]) the self-rebuild pushes `<image>:<sha>` to; unset: images stay local',
    ),
  CHOIROS_METRICS_PORT: z.coerce
    .number()
    .int()
    .min(0)
    .max(65535)
    .default(9464)
    .describe("Port of the worker's Prometheus `GET /metrics`; `0` turns the endpoint off"),
  CHOIROS_METRICS_HOST: z
    .string()
    .min(1)
    .default('127.0.0.1')
    .describe('Interface the metrics endpoint listens on (`0.0.0.0` to let a scraper on another host in)'),
  CHOIROS_TEMPORAL_SDK_METRICS: z
    .enum(['true', 'false'])
    .default('true')
    .transform((v) => v === 'true')
    .describe(
      "Include the Temporal SDK's metrics (task latencies, slots, polls; `temporal_*`) in `/metrics`; the SDK core serves them on a free loopback port that `/metrics` reads on each scrape",
    ),
  CHOIROS_SHUTDOWN_GRACE_SECONDS: z.coerce
    .number()
    .int()
    .min(0)
    .max(3600)
    .default(30)
    .describe(
      'On SIGTERM, seconds in-flight activities get to finish before they are cancelled and handed back to Temporal (their next attempt runs on another worker)',
    ),
  LOG_LEVEL: z
    .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace'])
    .default('info')
    .describe('pino log level'),
  /** OpenTelemetry tracing (CHOIROS_TRACING, OTEL_EXPORTER_OTLP_*): see telemetry/tracing.ts. */
  ...tracingConfigShape,
  /** TLS, mTLS and API key for Temporal; TLS for NATS (infra/tls/connections.ts). */
  ...connectionTlsShape,
});

export type WorkerConfig = z.output<typeof workerConfigSchema> & {
  dataDir: string;
  verifiersFile: string;
  artifactsDir: string;
  tenantsFile: string;
  /** Resolved execution-lane secrets (name → value). Never log this object. */
  secrets: Record<string, string>;
};

const SECRET_REF = /^([A-Za-z_][A-Za-z0-9_]{0,63})=(env|file):(.+)$/;

/** Resolves `NAME=env:VAR` / `NAME=file:/path` references; errors name the reference, never a value. */
export function resolveSecretRefs(spec: string, env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {};
  for (const ref of spec
    .split(',')
    .map((r) => r.trim())
    .filter(Boolean)) {
    const m = SECRET_REF.exec(ref);
    if (!m)
      throw new Error(`CHOIROS_SANDBOX_SECRETS: ${ref.split('=')[0]} is not NAME=env:VAR or NAME=file:/path`);
    const [, name = '', kind, target = ''] = m;
    let value: string | undefined;
    if (kind === 'env') value = env[target];
    else {
      try {
        value = readFileSync(target, 'utf8').replace(/\n$/, '');
      } catch {
        value = undefined;
      }
    }
    if (value === undefined || value.includes('\0'))
      throw new Error(
        `CHOIROS_SANDBOX_SECRETS: ${name} refers to ${kind}:${target}, which is unset or unreadable`,
      );
    out[name] = value;
  }
  return out;
}

/** Parses the environment; throws one message listing every bad variable. */
export function loadWorkerConfig(env: NodeJS.ProcessEnv): WorkerConfig {
  const parsed = workerConfigSchema.safeParse(env);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`);
    throw new Error(`invalid worker configuration:\n${lines.join('\n')}`);
  }
  checkConnectionTls(parsed.data);
  const dataDir = resolve(parsed.data.CHOIROS_DATA_DIR);
  return {
    ...parsed.data,
    secrets: resolveSecretRefs(parsed.data.CHOIROS_SANDBOX_SECRETS, env),
    dataDir,
    artifactsDir: resolve(parsed.data.CHOIROS_ARTIFACTS_DIR ?? join(dataDir, 'artifacts')),
    verifiersFile: resolve(parsed.data.CHOIROS_VERIFIERS_FILE),
    tenantsFile: resolve(parsed.data.CHOIROS_TENANTS_FILE),
  };
}
