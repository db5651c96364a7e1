/**
 * Generates docs/configuration.md: every environment variable the platform reads. The tables of
 * the config schemas come from the schemas themselves (each key's zod `.describe()` text, default
 * and accepted values); variables read outside a schema are listed here, in OTHER_VARIABLES, and
 * test/unit/docs-generated.test.ts checks that every variable the source reads is in one or the
 * other. `npm run docs:gen` writes the file; the same test fails when it is stale.
 */
import { relative, resolve } from 'node:path';
import { z } from 'zod';
import { apiConfigSchema } from '../../api/config';
import { workerConfigSchema } from '../../worker/config';
import { connectionTlsShape } from '../tls/connections';
import { tracingConfigShape } from '../../telemetry/tracing';
import { temporalSetupEnvSchema } from '../compose/temporal-setup';
import { formatMarkdown } from './gen-markdown';

export const CONFIGURATION_DOC = resolve(__dirname, '../../docs/configuration.md');
const ROOT = resolve(__dirname, '../..');

/** One documented variable, as a table row. */
export interface EnvVarDoc {
  name: string;
  /** Shown as is in the Default column; `undefined` renders as `–`. */
  default?: string;
  /** What values it takes, e.g. `integer 0–65535` or `` `on` \| `off` ``. */
  accepts?: string;
  description: string;
}

interface SchemaSection {
  title: string;
  intro: string;
  schema: z.ZodObject;
  /** Keys shown in a section of their own (the shared TLS and tracing shapes). */
  omit?: readonly string[];
  outro?: string;
}

interface ListSection {
  title: string;
  intro: string;
  vars: EnvVarDoc[];
  outro?: string;
}

type Section = SchemaSection | ListSection;

const SHARED_KEYS = [...Object.keys(connectionTlsShape), ...Object.keys(tracingConfigShape)] as const;

/** What a JSON Schema property of a config key accepts, in words. */
function accepts(prop: Record<string, unknown>): string {
  const bound = (b: unknown): unknown =>
    typeof b === 'number' && Math.abs(b) >= Number.MAX_SAFE_INTEGER ? undefined : b;
  const range = (lo: unknown, hi: unknown): string =>
    bound(lo) !== undefined && bound(hi) !== undefined
      ? ` ${String(lo)}–${String(hi)}`
      : bound(lo) !== undefined
        ? ` ≥ ${String(lo)}`
        : bound(hi) !== undefined
          ? ` ≤ ${String(hi)}`
          : '';
  if (Array.isArray(prop.enum)) return prop.enum.map((v) => `\`${String(v)}\``).join(', ');
  if (prop.type === 'integer') return `integer${range(prop.minimum, prop.maximum)}`;
  if (prop.type === 'number') return `number${range(prop.minimum, prop.maximum)}`;
  if (prop.format === 'uri') return 'URL';
  return 'text';
}

/** A default as the Default column shows it: paths inside the repository relative to it, big byte counts with their unit. */
function showDefault(name: string, value: unknown): string {
  if (typeof value === 'string') {
    if (value === '') return 'empty';
    const shown = value.startsWith(`${ROOT}/`) ? relative(ROOT, value) : value;
    return `\`${shown}\``;
  }
  if (typeof value === 'number' && /BYTES/.test(name) && value >= 1024 * 1024) {
    const units: [number, string][] = [
      [1024 ** 3, 'GiB'],
      [1024 ** 2, 'MiB'],
    ];
    const unit = units.find(([u]) => value % u === 0);
    return unit ? `\`${value}\` (${value / unit[0]} ${unit[1]})` : `\`${value}\``;
  }
  return `\`${JSON.stringify(value)}\``;
}

/** The rows of a config schema; throws naming every key without a `.describe()` text. */
export function schemaVariables(schema: z.ZodObject, omit: readonly string[] = []): EnvVarDoc[] {
  const js = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as {
    properties?: Record<string, Record<string, unknown>>;
    required?: string[];
  };
  const props = js.properties ?? {};
  const missing = Object.keys(props).filter((k) => typeof props[k]?.description !== 'string');
  if (missing.length > 0) throw new Error(`config keys without a .describe() text: ${missing.join(', ')}`);
  return Object.entries(props)
    .filter(([name]) => !omit.includes(name))
    .map(([name, prop]) => ({
      name,
      default:
        typeof prop.docDefault === 'string'
          ? prop.docDefault
          : prop.default !== undefined
            ? showDefault(name, prop.default)
            : js.required?.includes(name)
              ? '**required**'
              : undefined,
      accepts: accepts(prop),
      description: String(prop.description),
    }));
}

const v = (name: string, def: string | undefined, description: string): EnvVarDoc => ({
  name,
  default: def,
  description,
});

/**
 * Variables read outside the config schemas, by section. Each is read somewhere in the source
 * (the test checks both directions), except those marked as read by a library.
 */
export const OTHER_VARIABLES = {
  worker: [
    v('DOCKER_HOST', 'local socket', 'Docker engine (read by dockerode)'),
    v(
      'CHOIROS_TEST_PAUSE_CREATE_DIR',
      undefined,
      "**Test only** (the fault suite's `worker-kill-in-create`): `createSandbox` writes `<dir>/<runId>` once the workspace is made, then waits up to 10 min before creating the container. Never set it on a real worker ([reliability.md](reliability.md))",
    ),
    v(
      'PATH',
      'the worker’s',
      'With `HOME`, the only variables of the worker that reach its git child processes (`activities/workspace/git.ts`)',
    ),
    v('HOME', 'the worker’s', 'See `PATH`'),
    v(
      'MALLOC_ARENA_MAX',
      '`2` (set by the launchers)',
      'glibc malloc arenas of the worker and API processes that `npm start`, the benches and the fault suite start (`infra/stack/process.ts`): fewer arenas hold less freed memory (an idle worker: 313 → 273 MiB). Set it in the environment to override',
    ),
  ],
  tracingLibrary: [
    v(
      '`OTEL_EXPORTER_OTLP_HEADERS`, …',
      undefined,
      'Read by the exporter itself: headers (e.g. an API key), `…_TIMEOUT`, `…_COMPRESSION=gzip`',
    ),
    v(
      '`OTEL_BSP_SCHEDULE_DELAY`, …',
      '`5000`',
      'Batch span processor: export period (ms), `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`; SIGTERM flushes',
    ),
    v(
      '`OTEL_TRACES_SAMPLER` (+ `_ARG`)',
      'parent',
      "Sampling (default: keep every trace, follow a caller's decision), e.g. `parentbased_traceidratio` with `0.1`",
    ),
    v(
      'OTEL_RESOURCE_ATTRIBUTES',
      undefined,
      'More resource attributes (`deployment.environment.name=prod`); `service.name`/`service.version` are set (see below)',
    ),
    v('OTEL_SERVICE_NAME', undefined, 'Overrides `service.name` (`choiros-api` or `choiros-worker`)'),
  ],
  launcher: [
    v(
      'CHOIROS_DATA_DIR',
      '`./.data`',
      'Temporal SQLite file, NATS store and keys, dev issuer key, worktrees, logs (`logs/`); passed on to the api and worker',
    ),
    v('TEMPORAL_ADDRESS', undefined, 'Use this Temporal instead of starting the dev server'),
    v('TEMPORAL_UI_URL', undefined, 'The UI of that Temporal, printed as `TEMPORAL_UI_URL`'),
    v('TEMPORAL_NAMESPACE', '`default`', 'Namespace of the dev server the launcher starts'),
    v(
      'NATS_URL',
      undefined,
      'Use this NATS instead of starting one (with `NATS_CREDS`, `NATS_ACCOUNT_SEED_FILE`)',
    ),
    v('NATS_CREDS', undefined, 'Credentials of the api and worker for that NATS'),
    v('NATS_ACCOUNT_SEED_FILE', undefined, 'Account seed for users’ NATS credentials on that NATS'),
    v(
      'AUTH_ISSUER',
      undefined,
      'Trust this issuer (with the other `AUTH_*`) instead of starting the dev issuer',
    ),
    v('CHOIROS_TEMPORAL_PORT', '`7233`', 'Dev server port'),
    v('CHOIROS_TEMPORAL_UI_PORT', '`8233`', 'Dev server UI port'),
    v('CHOIROS_NATS_PORT', '`4222`', 'NATS port'),
    v('CHOIROS_DEV_ISSUER_PORT', '`8091`', 'Dev issuer (discovery + JWKS) port'),
    v('API_PORT', '`8080`', 'Port of the api the launcher starts (1–65535; it waits for `/readyz` there)'),
    v('GRPC_PORT', '`9090`', 'Port of the api’s gRPC listener the launcher starts'),
    v('CHOIROS_METRICS_PORT', '`9464`', 'Port of the worker’s `/metrics` the launcher starts'),
    v(
      'CHOIROS_DOCKER_DATA_ROOT',
      '`/var/lib/choiros-docker`',
      'data-root of a `dockerd` the stack starts itself',
    ),
    v(
      'BASE_IMAGE',
      '`scratch`',
      'Base of the sandbox image (e.g. `node:20-slim` where images can be pulled)',
    ),
    v(
      'CHOIROS_SANDBOX_IMAGE',
      '`choiros-sandbox:local`',
      'Name of the sandbox image it builds; passed to the worker',
    ),
    v(
      'CHOIROS_TENANTS_FILE',
      '`infra/tenants.default.yaml`',
      'Passed to the api and worker (tenant `default`: local repositories under `/tmp/` and the home dir)',
    ),
    v(
      'CHOIROS_CACHE_DIR',
      '`~/.cache/choiros`',
      'Provisioned binaries, provisioning logs and `provisioned.env`',
    ),
    v(
      'TEMPORAL_CLI',
      'found',
      'Explicit Temporal CLI binary (else `temporal` on `PATH`, else built with `go install`)',
    ),
    v('NATS_SERVER_BIN', 'found', 'Explicit `nats-server` binary'),
    v('CHOIROS_BUSYBOX', 'found', 'Explicit static busybox for the sandbox image'),
    v(
      'CHOIROS_TEMPORAL_BIN, CHOIROS_NATS_SERVER_BIN, CHOIROS_COMPOSE',
      'provisioned',
      'Written by provisioning to `provisioned.env` (the binaries it found, the compose CLI), read by the launcher and the tests',
    ),
  ],
  cli: [
    v(
      'CHOIROS_API_URL',
      '`http://127.0.0.1:8080`',
      'API the command-line client (`npm run cli`) talks to; `--api` wins',
    ),
    v('CHOIROS_TOKEN', undefined, 'Bearer token of the command-line client; `--token` wins'),
    v('CHOIROS_DATA_DIR', '`.data`', '`npm run token`: where the dev issuer’s key is'),
    v('AUTH_ISSUER', undefined, '`npm run token`: refuses to mint while another issuer is configured'),
  ],
  tests: [
    v(
      'CHOIROS_TEST_TEMPORAL_ADDRESS',
      undefined,
      'Reuse a running Temporal instead of starting the dev server',
    ),
    v('CHOIROS_TEST_NATS_URL', undefined, 'Reuse a running NATS (with the three below)'),
    v('CHOIROS_TEST_NATS_WORKER_CREDS', undefined, 'Worker credentials for that NATS'),
    v('CHOIROS_TEST_NATS_API_CREDS', undefined, 'API credentials for that NATS'),
    v('CHOIROS_TEST_NATS_AUTH_DIR', undefined, 'Its operator/account keys dir'),
    v('CHOIROS_TEST_KEEP', undefined, '`1` keeps the test work dir (logs, repos)'),
    v(
      'CHOIROS_RECORD_HISTORIES',
      undefined,
      '`1` with `npm run test:integration` re-records the replay fixtures in `test/fixtures/histories/` (only for intended, versioned workflow changes)',
    ),
    v('TEST_LOG_LEVEL', '`warn`', 'Raises log output of the tests’ workers and APIs'),
    v(
      'CHOIROS_TEST_SANDBOX_POOL_SIZE',
      '`0`',
      'Gives every test worker a warm sandbox pool of this size (e.g. the hostile suites with the pool on)',
    ),
    v('FAULTS', 'all', '`npm run test:faults`: a subset, e.g. `worker-sigkill,nats-restart`'),
    v(
      'CHOIROS_FAULTS_KEEP',
      undefined,
      '`1` keeps the fault suite’s work dir (logs, SQLite file, `results.json`)',
    ),
    v(
      'CHOIROS_FAULTS_PARTITION_SECONDS',
      '`25`',
      'How long the fault suite’s `nats-partition` drops the packets of its NATS ([reliability.md](reliability.md))',
    ),
    v(
      'CHOIROS_FAULTS_BURST_RUNS',
      '`300`',
      'Runs of the fault suite’s burst scenario ([reliability.md](reliability.md))',
    ),
    v(
      'CHOIROS_FAULTS_DOCKER_DATA_ROOT',
      '`/var/lib/choiros-faults-docker`',
      'data-root of the fault suite’s own `dockerd`',
    ),
    v(
      'CHOIROS_FAULTS_DOCKER_EXEC_ROOT',
      '`/run/choiros-faults`',
      'Exec root and socket dir of that `dockerd`',
    ),
  ],
  internal: [
    v(
      'CHOIROS_EGRESS_ALLOW, CHOIROS_EGRESS_BURST, CHOIROS_EGRESS_LOG_FIRST, CHOIROS_EGRESS_MAX_CONNECTIONS, CHOIROS_EGRESS_PORT, CHOIROS_EGRESS_LISTEN_CIDRS',
      undefined,
      "The egress proxy container's settings, set by the Docker driver from the run's policy and the worker's `CHOIROS_EGRESS_*` ([egress.md](egress.md))",
    ),
    v(
      'BIND_ON_IP, TEMPORAL_BROADCAST_ADDRESS',
      undefined,
      'The local Temporal server image’s environment, as upstream’s (`infra/images/temporal/entrypoint.sh`; [production.md](production.md))',
    ),
    v(
      'DEV_ISSUER',
      undefined,
      'Set by `npm run compose` itself while it runs the dev issuer (`infra/scripts/compose.sh`)',
    ),
    v(
      'GIT_INDEX_FILE',
      undefined,
      'Set per git call for a temporary index (its lock is cleaned like the others)',
    ),
    v(
      'CHOIROS_TEST_WORK_DIR, CHOIROS_TEST_SANDBOX_IMAGE, CHOIROS_CHILD_BUNDLE',
      undefined,
      "Set by the jest global setup for the tests and the test workers' child processes",
    ),
    v(
      'PORT, ROLE, VERSION',
      undefined,
      'Of the self-rebuild test fixture service (`test/helpers/rebuild-fixture.ts`)',
    ),
  ],
} as const satisfies Record<string, readonly EnvVarDoc[]>;

const SECTIONS: Section[] = [
  {
    title: 'API (`api/main.ts`: `apiConfigSchema` in `api/config.ts`)',
    intro:
      'The API parses these once at start and refuses to start on a bad value, naming it. The TLS and tracing settings it shares with the worker are in their own tables below.',
    schema: apiConfigSchema,
    omit: SHARED_KEYS,
    outro: [
      'Issuer and JWKS URLs must be `https` (plain `http` only on a loopback host). Tokens must carry `kid`, `sub`',
      '(the user id, `^[A-Za-z0-9_-]{1,64}$`) and `exp`; unknown `crit` headers, `none` and HS* are refused; tokens',
      'over 8 KiB are refused unread; scopes come from `scope` or `scp` (taken as they are) or `roles` (mapped by',
      '`AUTH_ROLE_SCOPES`): `runs:write` to start runs, `runs:read` to read them ([api.md](api.md#authentication)).',
    ].join('\n'),
  },
  {
    title: 'Worker (`worker/main.ts`: `workerConfigSchema` in `worker/config.ts`)',
    intro:
      'The worker parses these once at start and refuses to start on a bad value, naming it; `npm run verdict`, the container health check (`worker/healthcheck.ts`) and `npm run events:republish` (its Temporal and NATS keys) read the same schema.',
    schema: workerConfigSchema,
    omit: SHARED_KEYS,
  },
  {
    title: 'Worker: read outside its schema',
    intro: 'Read where they are used rather than through `workerConfigSchema`.',
    vars: [...OTHER_VARIABLES.worker],
  },
  {
    title: 'TLS to Temporal and NATS (API, worker, compose setup job: `infra/tls/connections.ts`)',
    intro: [
      'Unset, both connections are plaintext (the default, for a private network or loopback). The same settings apply',
      "to the API, the worker, the worker's health check and the compose Temporal setup job; a certificate without its",
      'key (or the reverse) stops the process at start, naming the pair. Tested on loopback with certificates the test',
      'makes: `test/integration/connection-tls.int.test.ts`. The HTTP API itself serves HTTPS with `API_TLS_CERT_FILE`',
      'and `API_TLS_KEY_FILE` (API table; `test/integration/api-tls.int.test.ts`).',
    ].join('\n'),
    schema: z.object(connectionTlsShape),
  },
  {
    title: 'Tracing (API and worker: `telemetry/tracing.ts`)',
    intro: [
      "OpenTelemetry traces over OTLP/HTTP (JSON), one trace per request from the API's HTTP or gRPC span through the",
      'workflow to each activity ([observability.md](observability.md)). Off unless an endpoint is set or',
      '`CHOIROS_TRACING=on`.',
    ].join('\n'),
    schema: z.object(tracingConfigShape),
  },
  {
    title: 'Tracing: read by the OpenTelemetry SDK and exporter',
    intro: 'Standard OpenTelemetry variables the platform does not parse itself.',
    vars: [...OTHER_VARIABLES.tracingLibrary],
    outro: [
      'Spans carry `service.name` `choiros-api` or `choiros-worker` and `service.version` `CHOIROS_VERSION` (API) or',
      '`CHOIROS_BUILD_ID` (worker). With tracing on, log lines written inside a span (a request, an activity) carry',
      '`trace_id` and `span_id`.',
    ].join('\n'),
  },
  {
    title: 'Compose Temporal setup job (`infra/compose/temporal-setup.ts`)',
    intro: [
      'The one-shot job of the compose stack that creates the namespace and registers the search attributes',
      '([production.md](production.md), which also lists the variables of `docker-compose.yml` and `npm run compose`).',
      'It also takes the TLS settings above.',
    ].join('\n'),
    schema: temporalSetupEnvSchema,
    omit: SHARED_KEYS,
  },
  {
    title: '`npm start` (the stack launcher: `infra/scripts/stack.ts`, `start.sh`, `provision.sh`)',
    intro: [
      'Everything else in the environment is passed on to the api and worker it starts, so the tables above apply too.',
      'What the launcher and provisioning set up: [reference.md](reference.md#what-npm-start-and-npm-test-set-up).',
    ].join('\n'),
    vars: [...OTHER_VARIABLES.launcher],
  },
  {
    title: 'Command-line tools (`api/cli/`, `infra/dev-issuer/token-cli.ts`)',
    intro:
      '`npm run cli -- --help` lists the client’s flags; `npm run token -- --help` those of the token tool.',
    vars: [...OTHER_VARIABLES.cli],
  },
  {
    title: 'Tests (`test/helpers/`, `test/faults/`)',
    intro: [
      '`npm run test:unit` runs the unit and replay tiers alone. The integration tier starts its own Temporal dev',
      'server and NATS on free loopback ports unless told to reuse running ones. Of the recorded histories in',
      "`test/fixtures/histories/`, `run-verifier-plan.json` (a run through the `patched('verifier-plan')` path) comes",
      'from `test/integration/sandboxes.int.test.ts`; `rebuild-completed.json` and `rebuild-rolled-back.json` from',
      '`test/integration/rebuild.int.test.ts`; `run-traced-approved.json` (a run written with the tracing interceptors',
      'on) from `test/integration/tracing.int.test.ts`. `CHOIROS_COMPOSE` (set by provisioning) is the CLI',
      '`test/integration/compose.int.test.ts` resolves `docker-compose.yml` with.',
      '',
      '`npm run test:faults` (not part of `npm test`; root, ~13–20 minutes) is the fault-injection suite (`test/faults/`):',
      'on a stack of its own (its own `dockerd`, a Temporal dev server with a SQLite file behind a delaying proxy, NATS',
      'in a network namespace of its own, the API and worker processes) it kills the worker, restarts Temporal, NATS',
      'and the Docker engine, fills the data disk, partitions NATS, and more (ten scenarios), each under a load of',
      'runs, and prints a table of faults × outcome; it exits 1 on any failed check. What each fault expects and the',
      'latest table: [reliability.md](reliability.md).',
    ].join('\n'),
    vars: [...OTHER_VARIABLES.tests],
  },
  {
    title: 'Internal: set by the platform for its own child processes',
    intro: 'Listed so that every variable the source reads is documented; not settings.',
    vars: [...OTHER_VARIABLES.internal],
  },
];

const cell = (s: string): string => s.replace(/\|/g, '\\|').replace(/\n/g, ' ');

function table(rows: EnvVarDoc[], withAccepts: boolean): string {
  const head = withAccepts
    ? '| Variable | Default | Accepts | Meaning |\n| --- | --- | --- | --- |'
    : '| Variable | Default | Meaning |\n| --- | --- | --- |';
  const lines = rows.map((r) => {
    const name = r.name
      .split(/, /)
      .map((n) => (/^[A-Z][A-Z0-9_]*$/.test(n) ? `\`${n}\`` : n))
      .join(', ');
    const cols = withAccepts
      ? [name, r.default ?? '–', r.accepts ?? '', r.description]
      : [name, r.default ?? '–', r.description];
    return `| ${cols.map(cell).join(' | ')} |`;
  });
  return [head, ...lines].join('\n');
}

/** Every variable name documented in docs/configuration.md. */
export function documentedVariables(): Set<string> {
  const names = new Set<string>();
  for (const s of SECTIONS) {
    const rows = 'schema' in s ? schemaVariables(s.schema) : s.vars;
    for (const r of rows) for (const m of r.name.matchAll(/[A-Z][A-Z0-9_]{2,}/g)) names.add(m[0]);
  }
  return names;
}

export function renderConfigurationDoc(): string {
  const parts = [
    '# Configuration',
    '<!-- Generated by `npm run docs:gen` (infra/scripts/gen-config-doc.ts) from the config schemas: edit the `.describe()` texts there, not this file. test/unit/docs-generated.test.ts fails when it is stale. -->',
    [
      'Every process parses its environment once at start and refuses to start on a bad value, naming it. The',
      "tables of the api, the worker, TLS, tracing and the compose setup job are generated from their zod schemas (each key's",
      '`.describe()` text, default and accepted values); the others list variables read outside a schema, and a test',
      'checks that every variable the source reads is on this page.',
    ].join('\n'),
  ];
  for (const s of SECTIONS) {
    parts.push(`## ${s.title}`, s.intro);
    if ('schema' in s) parts.push(table(schemaVariables(s.schema, s.omit), true));
    else parts.push(table(s.vars, false));
    if (s.outro) parts.push(s.outro);
  }
  return formatMarkdown(`${parts.join('\n\n')}\n`, CONFIGURATION_DOC);
}
