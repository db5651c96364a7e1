/**
 * API configuration: parsed once from the environment at start. Each key's `.describe()` text is its
 * documentation: docs/configuration.md is generated from it (`npm run docs:gen`).
 */
import { resolve } from 'node:path';
import { z } from 'zod';
import { tracingConfigShape } from '../telemetry/tracing';
import { trustedUrlSchema } from '../contracts';
import { DEFAULT_TENANTS_FILE } from '../tenancy';
import { checkConnectionTls, connectionTlsShape } from '../infra/tls/connections';

const algorithms = z
  .string()
  .default('RS256,ES256,EdDSA')
  .transform((s) =>
    s
      .split(',')
      .map((a) => a.trim())
      .filter(Boolean),
  )
  .pipe(
    z
      .array(
        z.enum(['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA']),
      )
      .min(1, 'at least one algorithm; never none, never HS*'),
  );

export const apiConfigSchema = z.object({
  API_RATE_LIMIT_PER_MINUTE: z.coerce
    .number()
    .int()
    .min(0)
    .default(600)
    .describe(
      'Sustained requests per minute per principal (tenant/user), HTTP and gRPC together; `0` turns limiting off',
    ),
  API_RATE_LIMIT_BURST: z.coerce
    .number()
    .int()
    .min(1)
    .default(60)
    .describe('Requests a principal may send at once before the per-minute rate applies'),
  API_MAX_STREAMS_PER_PRINCIPAL: z.coerce
    .number()
    .int()
    .min(1)
    .max(10_000)
    .default(32)
    .describe(
      'Event streams (SSE and gRPC `WatchRun`) one principal may hold open at once; one more is `429` (tenant `caps.eventStreamsPerPrincipal` overrides)',
    ),
  API_PORT: z.coerce.number().int().min(0).max(65535).default(8080).describe('Port the HTTP API listens on'),
  GRPC_PORT: z.coerce
    .number()
    .int()
    .min(0)
    .max(65535)
    .default(9090)
    .describe('Port of the gRPC API `choiros.v1.Runs`; `0` turns it off'),
  GRPC_HOST: z.string().min(1).default('127.0.0.1').describe('Interface the gRPC API binds to'),
  API_HOST: z.string().min(1).default('127.0.0.1').describe('Interface the HTTP API binds to'),
  API_TLS_CERT_FILE: z
    .string()
    .min(1)
    .optional()
    .describe(
      'PEM certificate (chain): with `API_TLS_KEY_FILE` the HTTP API serves HTTPS only (read at start); one without the other is refused',
    ),
  API_TLS_KEY_FILE: z.string().min(1).optional().describe('PEM private key of `API_TLS_CERT_FILE`'),
  TEMPORAL_ADDRESS: z
    .string()
    .min(1)
    .default('127.0.0.1:7233')
    .describe('Temporal frontend address (host:port)'),
  TEMPORAL_NAMESPACE: z.string().min(1).default('default').describe('Temporal namespace'),
  API_TEMPORAL_CALL_TIMEOUT_SECONDS: z.coerce
    .number()
    .int()
    .min(1)
    .max(300)
    .default(10)
    .describe(
      "Deadline of one request's calls to Temporal, together (the SDK's retries included); past it the request answers `503 service_unavailable` with `Retry-After`",
    ),
  CHOIROS_MAX_QUEUED_PER_TENANT: z.coerce
    .number()
    .int()
    .min(0)
    .max(1_000_000)
    .default(1000)
    .describe(
      'Runs of one tenant not yet running (`created` or `queued`) at which `POST /v1/runs` answers `429 queue_full` with `Retry-After` instead of starting another; `0` turns the bound off',
    ),
  CHOIROS_QUEUE_RETRY_AFTER_SECONDS: z.coerce
    .number()
    .int()
    .min(1)
    .max(3600)
    .default(30)
    .describe('`Retry-After` of a `429 queue_full`, in seconds'),
  NATS_URL: z
    .string()
    .min(1)
    .default('nats://127.0.0.1:4222')
    .describe('NATS server URL(s), comma-separated'),
  NATS_CREDS: z.string().optional().describe("The API's NATS credentials file; unset for an open server"),
  NATS_PING_INTERVAL_SECONDS: z.coerce
    .number()
    .int()
    .min(1)
    .max(600)
    .default(20)
    .describe(
      "Seconds between the client's PINGs to NATS; two unanswered in a row and the connection counts as dead and is replaced (a NATS that stops answering without closing: reliability.md `nats-partition`). nats.js's own default, 120, left a dead connection in TCP's retransmission backoff for minutes after the network healed",
    ),
  NATS_ACCOUNT_SEED_FILE: z
    .string()
    .optional()
    .describe(
      "Seed of the NATS account that signs users' short-lived credentials; without it `POST /v1/nats/credentials` answers 503",
    ),
  NATS_USER_CREDS_TTL_SECONDS: z.coerce
    .number()
    .int()
    .min(30)
    .max(86_400)
    .default(900)
    .describe("Lifetime of users' NATS credentials, in seconds"),
  NATS_CLIENT_URL: z
    .string()
    .optional()
    .describe('NATS URL(s) handed to clients with their credentials; unset: `NATS_URL`'),
  AUTH_ISSUER: trustedUrlSchema.describe(
    'Expected `iss` of access tokens: an OIDC issuer URL (https, or http on a loopback host). Required',
  ),
  AUTH_AUDIENCE: z.string().min(1).default('choiros-api').describe('Expected `aud` of access tokens'),
  AUTH_JWKS_URL: trustedUrlSchema
    .optional()
    .describe(
      'JWKS URL (https, or http on loopback); unset: discovered from `${AUTH_ISSUER}/.well-known/openid-configuration`',
    ),
  AUTH_ALGORITHMS: algorithms.describe(
    'Accepted signature algorithms, comma-separated (asymmetric only; `none` and HS* are refused)',
  ),
  AUTH_TENANT_CLAIM: z.string().min(1).default('tenant').describe('Claim that carries the tenant'),
  AUTH_DEFAULT_TENANT: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,64}$/)
    .default('default')
    .describe('Tenant of tokens without the tenant claim'),
  AUTH_CLOCK_TOLERANCE_SECONDS: z.coerce
    .number()
    .int()
    .min(0)
    .max(60)
    .default(30)
    .describe('Clock skew allowed on `exp`/`nbf`, in seconds'),
  AUTH_EXTRA_ISSUERS: z
    .string()
    .default('[]')
    .transform((s, ctx) => {
      try {
        return JSON.parse(s) as unknown;
      } catch {
        ctx.addIssue({ code: 'custom', message: 'must be a JSON array' });
        return z.NEVER;
      }
    })
    .pipe(
      z.array(
        z
          .object({
            issuer: trustedUrlSchema,
            audience: z.string().min(1),
            jwksUrl: trustedUrlSchema.optional(),
          })
          .strict(),
      ),
    )
    .describe(
      'More trusted issuers, JSON `[{"issuer", "audience", "jwksUrl"?}]`; a token\'s `iss` picks one; keys are never fetched from a URL named in a token',
    ),
  AUTH_MAX_TOKEN_AGE_SECONDS: z.coerce
    .number()
    .int()
    .min(1)
    .max(7 * 86_400)
    .optional()
    .describe(
      "Oldest access token accepted, in seconds since its `iat` (tokens then need an `iat`); unset: only `exp` limits a token's life",
    ),
  AUTH_ROLE_SCOPES: z
    .string()
    .optional()
    .transform((s, ctx) => {
      if (s === undefined || s === '') return undefined;
      try {
        return JSON.parse(s) as unknown;
      } catch {
        ctx.addIssue({ code: 'custom', message: 'must be a JSON object' });
        return z.NEVER;
      }
    })
    .pipe(z.record(z.string().min(1), z.array(z.string().min(1))).optional())
    .describe(
      'Roles → scopes, JSON `{"<role>": ["<scope>", …]}`: values of the token\'s `roles` claim grant exactly these scopes (an unknown role grants nothing); OAuth scopes in `scope`/`scp` are taken as they are. Unset: the default mapping of [tenancy.md](tenancy.md), "Roles"',
    ),
  AUTH_TOKEN_TYP: z
    .string()
    .min(1)
    .optional()
    .describe('Required JWT `typ` header (e.g. `at+jwt`); unset accepts any'),
  AUTH_JWKS_COOLDOWN_SECONDS: z.coerce
    .number()
    .int()
    .min(1)
    .max(3600)
    .default(30)
    .describe('At most one JWKS fetch per this many seconds for tokens with an unknown `kid`'),
  AUTH_JWKS_MAX_AGE_SECONDS: z.coerce
    .number()
    .int()
    .min(10)
    .max(86_400)
    .default(600)
    .describe(
      'Cached signing keys older than this (seconds) are refreshed in the background; while the JWKS endpoint is down cached keys keep working',
    ),
  CHOIROS_VERIFIERS_FILE: z
    .string()
    .min(1)
    .default('infra/verifiers.yaml')
    .describe('The verifier allow-list (YAML): unknown verifier ids are refused at request time'),
  CHOIROS_TENANTS_FILE: z
    .string()
    .min(1)
    .default(DEFAULT_TENANTS_FILE)
    .describe(
      "The tenants file (YAML, [tenancy.md](tenancy.md)): each tenant's repository grants, issuers and caps. Validated at start; a bad file stops the API with the path of the bad key",
    ),
  CHOIROS_DATA_DIR: z
    .string()
    .min(1)
    .default('.data')
    .describe(
      "The platform's data dir (worktrees, mirrors, artifacts): never a run's repository, whatever the grants",
    ),
  CHOIROS_PLATFORM_PATHS: z
    .string()
    .default('')
    .transform((s) =>
      s
        .split(',')
        .map((p) => p.trim())
        .filter(Boolean),
    )
    .pipe(z.array(z.string().startsWith('/', 'must be an absolute path')))
    .describe('More absolute paths of the platform that no run may use as its repository, comma-separated'),
  API_METRICS_PORT: z.coerce
    .number()
    .int()
    .min(0)
    .max(65535)
    .default(0)
    .describe(
      'Port of a separate listener for `GET /metrics` (Prometheus), and then the API port answers 404 for it; `0`: served on the API port',
    ),
  API_METRICS_HOST: z
    .string()
    .min(1)
    .default('127.0.0.1')
    .describe('Interface the separate metrics listener binds to'),
  API_METRICS_TOKEN_FILE: z
    .string()
    .min(1)
    .optional()
    .describe(
      'File with a bearer token (≥ 16 characters) that `GET /metrics` then requires, on whichever listener serves it',
    ),
  CHOIROS_REBUILD_TARGETS_FILE: z
    .string()
    .min(1)
    .default('infra/rebuild-targets.yaml')
    .describe(
      'Self-rebuild targets (YAML); a missing file means no targets, and `POST /v1/rebuilds` answers `unknown_target`',
    ),
  CHOIROS_REBUILD_APPROVAL_TIMEOUT_SECONDS: z.coerce
    .number()
    .int()
    .min(1)
    .max(7 * 86_400)
    .default(86_400)
    .describe('How long a rebuild waits for approval when the request names no deadline, in seconds'),
  CHOIROS_VERSION: z
    .string()
    .max(100)
    .default('dev')
    .describe(
      'Version this API reports on `/healthz` and as `service.version` of its spans (the commit a rebuild built it from; set by infra/Dockerfile.api)',
    ),
  LOG_LEVEL: z
    .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace'])
    .default('info')
    .describe('pino log level'),
  API_SHUTDOWN_GRACE_SECONDS: z.coerce
    .number()
    .int()
    .min(0)
    .max(600)
    .default(20)
    .describe(
      'On SIGTERM, seconds in-flight HTTP and gRPC calls get to finish (new ones get 503) before the remaining connections are closed',
    ),
  /** OpenTelemetry tracing (CHOIROS_TRACING, OTEL_EXPORTER_OTLP_*): see telemetry/tracing.ts. */
  ...tracingConfigShape,
  /** TLS, mTLS and API key for Temporal; TLS for NATS (infra/tls/connections.ts). */
  ...connectionTlsShape,
});

export type ApiConfig = z.output<typeof apiConfigSchema> & {
  verifiersFile: string;
  rebuildTargetsFile: string;
  tenantsFile: string;
  dataDir: string;
};

export function loadApiConfig(env: NodeJS.ProcessEnv): ApiConfig {
  const parsed = apiConfigSchema.safeParse(env);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`);
    throw new Error(`invalid API configuration:\n${lines.join('\n')}`);
  }
  checkConnectionTls(parsed.data);
  if ((parsed.data.API_TLS_CERT_FILE === undefined) !== (parsed.data.API_TLS_KEY_FILE === undefined))
    throw new Error(
      'invalid API configuration:\n  API_TLS_CERT_FILE: API_TLS_CERT_FILE and API_TLS_KEY_FILE go together',
    );
  return {
    ...parsed.data,
    verifiersFile: resolve(parsed.data.CHOIROS_VERIFIERS_FILE),
    rebuildTargetsFile: resolve(parsed.data.CHOIROS_REBUILD_TARGETS_FILE),
    tenantsFile: resolve(parsed.data.CHOIROS_TENANTS_FILE),
    dataDir: resolve(parsed.data.CHOIROS_DATA_DIR),
  };
}
