/** API configuration: parsed once from the environment at start, with a default and a doc line per key. */
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
  /** Sustained requests per minute per principal (tenant/user) on /v1; 0 turns limiting off. */
  API_RATE_LIMIT_PER_MINUTE: z.coerce.number().int().min(0).default(600),
  /** Requests a principal may send at once before the per-minute rate applies. */
  API_RATE_LIMIT_BURST: z.coerce.number().int().min(1).default(60),
  /** Event streams (SSE and gRPC WatchRun) one principal may hold open at once, unless its tenant's caps say otherwise. */
  API_MAX_STREAMS_PER_PRINCIPAL: z.coerce.number().int().min(1).max(10_000).default(32),
  /** Port the HTTP API listens on. */
  API_PORT: z.coerce.number().int().min(0).max(65535).default(8080),
  /** Port of the gRPC API (choiros.v1.Runs); 0 turns it off. */
  GRPC_PORT: z.coerce.number().int().min(0).max(65535).default(9090),
  /** Interface the gRPC API binds to. */
  GRPC_HOST: z.string().min(1).default('127.0.0.1'),
  /** Interface the HTTP API binds to. */
  API_HOST: z.string().min(1).default('127.0.0.1'),
  /** PEM certificate (chain) file: set with API_TLS_KEY_FILE, the HTTP API serves HTTPS only. */
  API_TLS_CERT_FILE: z.string().min(1).optional(),
  /** PEM private key file of API_TLS_CERT_FILE. */
  API_TLS_KEY_FILE: z.string().min(1).optional(),
  /** Temporal frontend address (host:port). */
  TEMPORAL_ADDRESS: z.string().min(1).default('127.0.0.1:7233'),
  /** Temporal namespace. */
  TEMPORAL_NAMESPACE: z.string().min(1).default('default'),
  /** Deadline of one request's Temporal calls together (and of any single call); past it the request answers 503 service_unavailable. */
  API_TEMPORAL_CALL_TIMEOUT_SECONDS: z.coerce.number().int().min(1).max(300).default(10),
  /**
   * Runs of one tenant not yet running (created or queued) at which `POST /v1/runs` answers
   * `429 queue_full` instead of starting another; 0 turns the bound off.
   */
  CHOIROS_MAX_QUEUED_PER_TENANT: z.coerce.number().int().min(0).max(1_000_000).default(1000),
  /** `Retry-After` of a `429 queue_full`, in seconds. */
  CHOIROS_QUEUE_RETRY_AFTER_SECONDS: z.coerce.number().int().min(1).max(3600).default(30),
  /** NATS server URL(s), comma-separated. */
  NATS_URL: z.string().min(1).default('nats://127.0.0.1:4222'),
  /** Path of the API's NATS credentials file; none for an open server. */
  NATS_CREDS: z.string().optional(),
  /**
   * Seconds between the client's PINGs to NATS; two unanswered in a row and the connection counts as
   * dead and is replaced (a NATS that stops answering without closing, docs/reliability.md
   * `nats-partition`). nats.js's own default is 120, which left a dead connection in TCP's
   * retransmission backoff for minutes after the network healed.
   */
  NATS_PING_INTERVAL_SECONDS: z.coerce.number().int().min(1).max(600).default(20),
  /** File holding the NATS account seed that signs users' short-lived credentials (`POST /v1/nats/credentials`). */
  NATS_ACCOUNT_SEED_FILE: z.string().optional(),
  /** Lifetime of users' NATS credentials, in seconds. */
  NATS_USER_CREDS_TTL_SECONDS: z.coerce.number().int().min(30).max(86_400).default(900),
  /** NATS URL(s) handed to clients with their credentials; default NATS_URL. */
  NATS_CLIENT_URL: z.string().optional(),
  /** Expected `iss` of access tokens (an OIDC issuer URL; https, or http on loopback). Required. */
  AUTH_ISSUER: trustedUrlSchema,
  /** Expected `aud` of access tokens. */
  AUTH_AUDIENCE: z.string().min(1).default('choiros-api'),
  /** JWKS URL (https, or http on loopback); default: discovered from `${AUTH_ISSUER}/.well-known/openid-configuration`. */
  AUTH_JWKS_URL: trustedUrlSchema.optional(),
  /** Accepted signature algorithms, comma-separated (asymmetric only). */
  AUTH_ALGORITHMS: algorithms,
  /** Claim that carries the tenant. */
  AUTH_TENANT_CLAIM: z.string().min(1).default('tenant'),
  /** Tenant of tokens without the tenant claim. */
  AUTH_DEFAULT_TENANT: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,64}$/)
    .default('default'),
  /** Allowed clock skew for exp/nbf, in seconds (at most 60). */
  AUTH_CLOCK_TOLERANCE_SECONDS: z.coerce.number().int().min(0).max(60).default(30),
  /** More trusted issuers, as JSON: [{"issuer": "...", "audience": "...", "jwksUrl": "..."?}]. */
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
    ),
  /**
   * Oldest access token accepted, in seconds since its `iat` (tokens then need an `iat`); unset:
   * only `exp` limits a token's life.
   */
  AUTH_MAX_TOKEN_AGE_SECONDS: z.coerce
    .number()
    .int()
    .min(1)
    .max(7 * 86_400)
    .optional(),
  /**
   * The roles → scopes mapping, as JSON `{"<role>": ["<scope>", ...]}`: values of the token's
   * `roles` claim grant exactly these scopes (an unknown role grants nothing). OAuth scopes in
   * `scope`/`scp` are taken as they are. Default: docs/tenancy.md, "Roles".
   */
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
    .pipe(z.record(z.string().min(1), z.array(z.string().min(1))).optional()),
  /** Required JWT `typ` header (e.g. at+jwt); unset accepts any. */
  AUTH_TOKEN_TYP: z.string().min(1).optional(),
  /** At most one JWKS fetch per this many seconds for tokens with an unknown key id. */
  AUTH_JWKS_COOLDOWN_SECONDS: z.coerce.number().int().min(1).max(3600).default(30),
  /** Cached signing keys older than this are refreshed in the background (seconds). */
  AUTH_JWKS_MAX_AGE_SECONDS: z.coerce.number().int().min(10).max(86_400).default(600),
  /** The verifier allow-list (YAML), used to reject unknown verifier ids at request time. */
  CHOIROS_VERIFIERS_FILE: z.string().min(1).default('infra/verifiers.yaml'),
  /**
   * The tenants file (YAML, docs/tenancy.md): each tenant's repository grants, issuers and caps.
   * Validated at start; a bad file stops the API with the path of the bad key.
   */
  CHOIROS_TENANTS_FILE: z.string().min(1).default(DEFAULT_TENANTS_FILE),
  /** The platform's data dir (worktrees, mirrors, artifacts): never a run's repository, whatever the grants. */
  CHOIROS_DATA_DIR: z.string().min(1).default('.data'),
  /** More paths of the platform that no run may use as its repository, comma-separated (absolute). */
  CHOIROS_PLATFORM_PATHS: z
    .string()
    .default('')
    .transform((s) =>
      s
        .split(',')
        .map((p) => p.trim())
        .filter(Boolean),
    )
    .pipe(z.array(z.string().startsWith('/', 'must be an absolute path'))),
  /**
   * Port of a separate listener for `GET /metrics` (Prometheus); 0 serves it on the API port.
   * With a port of its own, the API port answers 404 for /metrics.
   */
  API_METRICS_PORT: z.coerce.number().int().min(0).max(65535).default(0),
  /** Interface the separate metrics listener binds to. */
  API_METRICS_HOST: z.string().min(1).default('127.0.0.1'),
  /** File holding a bearer token that `GET /metrics` then requires (on whichever listener serves it). */
  API_METRICS_TOKEN_FILE: z.string().min(1).optional(),
  /** Self-rebuild targets (YAML); a missing file means no targets, and `POST /v1/rebuilds` answers unknown_target. */
  CHOIROS_REBUILD_TARGETS_FILE: z.string().min(1).default('infra/rebuild-targets.yaml'),
  /** How long a rebuild waits for approval when the request names no deadline (seconds). */
  CHOIROS_REBUILD_APPROVAL_TIMEOUT_SECONDS: z.coerce
    .number()
    .int()
    .min(1)
    .max(7 * 86_400)
    .default(86_400),
  /** Version this API reports on /healthz (the commit a rebuild built it from; set by infra/Dockerfile.api). */
  CHOIROS_VERSION: z.string().max(100).default('dev'),
  /** pino log level. */
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info'),
  /**
   * On SIGTERM, seconds in-flight HTTP and gRPC calls get to finish (new ones are refused) before
   * the remaining connections are closed.
   */
  API_SHUTDOWN_GRACE_SECONDS: z.coerce.number().int().min(0).max(600).default(20),
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
