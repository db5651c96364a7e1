/** Worker configuration: parsed once from the environment at start, with a default and a doc line per key. */
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
  /** Temporal frontend address (host:port). */
  TEMPORAL_ADDRESS: z.string().min(1).default('127.0.0.1:7233'),
  /** Temporal namespace. */
  TEMPORAL_NAMESPACE: z.string().min(1).default('default'),
  /** NATS server URL(s), comma-separated. */
  NATS_URL: z.string().min(1).default('nats://127.0.0.1:4222'),
  /** Path of the worker's NATS credentials file (JWT + nkey seed); none for an open server. */
  NATS_CREDS: z.string().optional(),
  /**
   * Seconds between the client's PINGs to NATS; two unanswered in a row and the connection counts as
   * dead and is replaced (a NATS that stops answering without closing, docs/reliability.md
   * `nats-partition`). nats.js's own default is 120, which left a dead connection in TCP's
   * retransmission backoff for minutes after the network healed.
   */
  NATS_PING_INTERVAL_SECONDS: z.coerce.number().int().min(1).max(600).default(20),
  /** Directory for worktrees and other worker state. */
  CHOIROS_DATA_DIR: z.string().min(1).default('.data'),
  /** Content-addressed artifact store (command logs, verifier reports); default `<CHOIROS_DATA_DIR>/artifacts`. */
  CHOIROS_ARTIFACTS_DIR: z.string().min(1).optional(),
  /** Bytes of one command's output kept in the artifact store; beyond it output is hashed and counted only. */
  CHOIROS_MAX_LOG_BYTES: z.coerce
    .number()
    .int()
    .min(1024)
    .max(1024 * 1024 * 1024)
    .default(64 * 1024 * 1024),
  /** The verifier allow-list (YAML). Platform configuration, never read from a run's worktree. */
  CHOIROS_VERIFIERS_FILE: z.string().min(1).default('infra/verifiers.yaml'),
  /** Sandbox driver: `docker` (containers, the default) or `local` (host child processes; much weaker isolation). */
  CHOIROS_SANDBOX_DRIVER: z.enum(['docker', 'local']).default('docker'),
  /** Image sandboxes run in. */
  CHOIROS_SANDBOX_IMAGE: z.string().min(1).default('choiros-sandbox:local'),
  /** This host's id: names the host-specific sandbox task queue `choiros-sandbox-<id>`. */
  CHOIROS_HOST_ID: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,40}$/)
    .default(hostIdDefault),
  /** uid:gid sandbox processes run as (never root). */
  CHOIROS_SANDBOX_USER: z
    .string()
    .regex(/^[1-9][0-9]*:[1-9][0-9]*$/, 'must be uid:gid, not root')
    .default('10001:10001'),
  /** Memory limit per sandbox container in MiB (swap is not allowed beyond it). */
  CHOIROS_SANDBOX_MEMORY_MB: z.coerce.number().int().min(16).max(65536).default(512),
  /** CPU limit per sandbox container (cores, fractional allowed). */
  CHOIROS_SANDBOX_CPUS: z.coerce.number().min(0.1).max(64).default(1),
  /** Process limit per sandbox container. */
  /** Size of each run's own filesystem (its tree) in MiB; 0 turns the per-run quota off. Needs a root worker. */
  CHOIROS_WORKSPACE_QUOTA_MB: z.coerce.number().int().min(0).max(1_048_576).default(1024),
  /** Most entries (files, links, directories) a run's tree may hold when the host reads it. */
  CHOIROS_WORKSPACE_MAX_ENTRIES: z.coerce.number().int().min(100).max(10_000_000).default(100_000),
  /** The data disk counts as full under this many free MiB: a host step failing then fails `host_disk_full` (decision 0023). */
  CHOIROS_DISK_MIN_FREE_MB: z.coerce.number().int().min(0).max(1_048_576).default(64),
  /** How long a host step that ran out of disk space waits for space to come back before the run fails `host_disk_full`. */
  CHOIROS_DISK_FULL_WAIT_SECONDS: z.coerce.number().int().min(0).max(3600).default(60),
  /** A git lock file older than this, that no live process holds, is stale and removed (locks.ts). */
  CHOIROS_GIT_LOCK_STALE_SECONDS: z.coerce.number().int().min(5).max(86_400).default(60),
  /** Most bytes of file content a run's tree may hold when the host reads it. */
  CHOIROS_WORKSPACE_MAX_BYTES: z.coerce
    .number()
    .int()
    .min(1024 * 1024)
    .max(1024 * 1024 * 1024 * 1024)
    .default(512 * 1024 * 1024),
  /** Most bytes one tenant's mirror of a remote (https) repository may hold after a fetch (decision 0019). */
  CHOIROS_MIRROR_MAX_BYTES: z.coerce
    .number()
    .int()
    .min(1024 * 1024)
    .max(1024 * 1024 * 1024 * 1024)
    .default(2 * 1024 * 1024 * 1024),
  /** One fetch from or push to a remote repository may take this long, in seconds. */
  CHOIROS_MIRROR_TIMEOUT_SECONDS: z.coerce.number().int().min(5).max(7200).default(600),
  /**
   * The local driver runs work items as host processes: for trusted development only. It refuses to
   * start unless this is `trusted-dev`.
   */
  CHOIROS_LOCAL_DRIVER: z.enum(['refuse', 'trusted-dev']).default('refuse'),
  CHOIROS_SANDBOX_PIDS: z.coerce.number().int().min(8).max(65536).default(256),
  /**
   * Warm sandbox pool (decision 0016): execution-lane containers kept made and started, each over a
   * prepared workspace slot, so a run's sandbox is ready without a cold create; 0 (the default)
   * turns it off. This is the shared lane: runs with network policy `none` of tenants without
   * secrets (Docker driver); CHOIROS_SANDBOX_POOL_LANES adds lanes for tenants with secrets.
   */
  CHOIROS_SANDBOX_POOL_SIZE: z.coerce.number().int().min(0).max(64).default(0),
  /**
   * Pool lanes of tenants with secrets, `tenant:size` comma-separated (e.g. `acme:2,globex:1`): a
   * tenant lane's containers hold that tenant's secrets and serve only its runs; runs of tenants
   * with secrets but no lane get a cold lane. Empty (the default): no tenant lanes.
   */
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
    .transform((entries) => Object.fromEntries(entries.map(([t = '', n = '0']) => [t, Number(n)]))),
  /** Pool slots made at the same time while the pool refills in the background. */
  CHOIROS_SANDBOX_POOL_REFILL: z.coerce.number().int().min(1).max(16).default(2),
  /** Maximum age of events in the JetStream stream, in days. */
  CHOIROS_EVENTS_MAX_AGE_DAYS: z.coerce.number().int().min(1).max(3650).default(30),
  /** Maximum size of the event stream in bytes. */
  CHOIROS_EVENTS_MAX_BYTES: z.coerce
    .number()
    .int()
    .min(1024 * 1024)
    .default(10 * 1024 * 1024 * 1024),
  /**
   * Secrets for the execution lane, by reference: `NAME=env:VAR` (the worker's variable VAR) or
   * `NAME=file:/path`, comma-separated. Values reach only execution-lane containers as `NAME`;
   * never the verifier lane, logs or events.
   */
  CHOIROS_SANDBOX_SECRETS: z.string().default(''),
  /**
   * Egress proxy (docs/egress.md): CIDRs (`a.b.c.d/n`, IPv6 too) a run's proxy may connect to
   * although they are not public addresses, comma-separated. Trusted platform configuration for a
   * known internal service or a test target; empty (the default) lets out public addresses only.
   */
  CHOIROS_EGRESS_ALLOW_CIDRS: cidrList,
  /** CIDRs every egress proxy refuses even when public, e.g. the Docker host's own public addresses. */
  CHOIROS_EGRESS_DENY_CIDRS: cidrList,
  /** Sustained egress attempts per second one proxy decides on (bursts of twice that); more are `rate_limited`. */
  CHOIROS_EGRESS_RATE_PER_SECOND: z.coerce.number().int().min(1).max(10_000).default(50),
  /** Egress attempts one run's proxy decides on in its life; more are `rate_limited`. */
  CHOIROS_EGRESS_MAX_ATTEMPTS: z.coerce.number().int().min(1).max(1_000_000).default(1000),
  /** Seconds between orphan sweeps (containers/worktrees of finished or unknown runs); 0 turns it off. */
  CHOIROS_SWEEP_INTERVAL_SECONDS: z.coerce.number().int().min(0).max(86400).default(300),
  /** Orphans younger than this many seconds are left alone. */
  CHOIROS_SWEEP_GRACE_SECONDS: z.coerce
    .number()
    .int()
    .min(0)
    .max(7 * 86400)
    .default(600),
  /**
   * The tenants file (YAML, docs/tenancy.md), validated at start: repository grants (re-checked
   * before a sandbox is created) and per-tenant caps, which override the two settings below.
   */
  CHOIROS_TENANTS_FILE: z.string().min(1).default(DEFAULT_TENANTS_FILE),
  /** Runs of one user in flight at once (fairness) unless the tenant's caps say otherwise; more wait as `queued`, in order. */
  CHOIROS_MAX_RUNS_PER_USER: z.coerce.number().int().min(1).max(10_000).default(8),
  /** Runs of one tenant in flight at once unless the tenant's caps say otherwise; more wait as `queued`. */
  CHOIROS_MAX_RUNS_PER_TENANT: z.coerce.number().int().min(1).max(100_000).default(64),
  /** Longest a run waits for admission (queued) before it fails with `admission_timeout`, in seconds. */
  CHOIROS_ADMISSION_TIMEOUT_SECONDS: z.coerce
    .number()
    .int()
    .min(1)
    .max(7 * 86400)
    .default(21_600),
  /**
   * Build id of this worker's code (the commit a rebuild deployed it from; `dev` otherwise). Stamped
   * on every workflow task it completes, so a history shows which build ran each step across a swap.
   */
  CHOIROS_BUILD_ID: z
    .string()
    .regex(/^[A-Za-z0-9._-]{1,64}$/)
    .default('dev'),
  /** Registry (host[:port][/prefix]) the self-rebuild pushes `<image>:<sha>` to; unset: images stay local. */
  CHOIROS_REBUILD_REGISTRY: z
    .string()
    .regex(/^[a-z0-9.-]+(:[0-9]{1,5})?(\/[a-z0-9._-]+)*$/)
    .optional(),
  /** Port of the worker's Prometheus `GET /metrics`; 0 turns the endpoint off. */
  CHOIROS_METRICS_PORT: z.coerce.number().int().min(0).max(65535).default(9464),
  /** Interface the metrics endpoint listens on (`0.0.0.0` to let a scraper on another host in). */
  CHOIROS_METRICS_HOST: z.string().min(1).default('127.0.0.1'),
  /**
   * Include the Temporal SDK's metrics (task latencies, slots, polls; `temporal_*`) in `/metrics`.
   * The SDK core serves them on a free loopback port that `/metrics` reads on each scrape.
   */
  CHOIROS_TEMPORAL_SDK_METRICS: z
    .enum(['true', 'false'])
    .default('true')
    .transform((v) => v === 'true'),
  /**
   * On SIGTERM, seconds in-flight activities get to finish before they are cancelled and handed
   * back to Temporal (their next attempt runs on another worker).
   */
  CHOIROS_SHUTDOWN_GRACE_SECONDS: z.coerce.number().int().min(0).max(3600).default(30),
  /** pino log level. */
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info'),
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
