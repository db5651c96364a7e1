/**
 * One-shot Temporal namespace setup for the compose stack (docker-compose.yml, service
 * `temporal-setup`): waits for the frontend, registers the namespace when it is missing and adds the
 * platform's custom search attributes (contracts SEARCH_ATTRIBUTES, the same list the dev server
 * gets with `--search-attribute`), then waits until the namespace lists every one of them.
 * Idempotent: existing namespace and attributes are left alone; a name registered with another
 * type fails the setup, naming it.
 */
import { status } from '@grpc/grpc-js';
import { Connection, isGrpcServiceError } from '@temporalio/client';
import { msToTs } from '@temporalio/common/lib/time';
import { temporal } from '@temporalio/proto';
import pino, { type Logger } from 'pino';
import { z } from 'zod';
import { SEARCH_ATTRIBUTES } from '../../contracts';
import { connectionTlsShape, temporalConnectionSecurity } from '../tls/connections';

const IndexedValueType = temporal.api.enums.v1.IndexedValueType;
type IndexedValueType = temporal.api.enums.v1.IndexedValueType;

/** A search attribute exists with another type: retrying cannot fix it, an operator must. */
export class SearchAttributeConflictError extends Error {
  readonly code = 'search_attribute_conflict';
}

export const temporalSetupEnvSchema = z.object({
  TEMPORAL_ADDRESS: z
    .string()
    .min(1)
    .default('127.0.0.1:7233')
    .describe('Temporal frontend address (host:port)'),
  TEMPORAL_NAMESPACE: z
    .string()
    .min(1)
    .default('default')
    .describe('Namespace to create (when missing) and register the search attributes in'),
  CHOIROS_TEMPORAL_RETENTION_DAYS: z.coerce
    .number()
    .int()
    .min(1)
    .max(3650)
    .default(30)
    .describe('Retention of closed workflow histories in a namespace this setup creates, in days'),
  CHOIROS_TEMPORAL_SETUP_TIMEOUT_SECONDS: z.coerce
    .number()
    .int()
    .min(1)
    .max(3600)
    .default(300)
    .describe('How long to wait for the frontend and for the attributes to become visible, in seconds'),
  /** TLS, mTLS and API key for Temporal, as for the API and worker (infra/tls/connections.ts). */
  ...connectionTlsShape,
});
export type TemporalSetupEnv = z.output<typeof temporalSetupEnvSchema>;

/** The custom search attributes the platform needs, with their Temporal index types. */
export function requiredSearchAttributes(): Record<string, IndexedValueType> {
  const types: Record<string, IndexedValueType> = {
    KEYWORD: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    TEXT: IndexedValueType.INDEXED_VALUE_TYPE_TEXT,
    INT: IndexedValueType.INDEXED_VALUE_TYPE_INT,
    DOUBLE: IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
    BOOL: IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
    DATETIME: IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    KEYWORD_LIST: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
  };
  const out: Record<string, IndexedValueType> = {};
  for (const key of Object.values(SEARCH_ATTRIBUTES)) {
    const t = types[key.type];
    if (t === undefined) throw new Error(`search attribute ${key.name}: unsupported type ${key.type}`);
    out[key.name] = t;
  }
  return out;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function ensureNamespace(conn: Connection, env: TemporalSetupEnv, logger: Logger): Promise<void> {
  try {
    await conn.workflowService.describeNamespace({ namespace: env.TEMPORAL_NAMESPACE });
    return;
  } catch (err) {
    if (!(isGrpcServiceError(err) && err.code === status.NOT_FOUND)) throw err;
  }
  await conn.workflowService.registerNamespace({
    namespace: env.TEMPORAL_NAMESPACE,
    workflowExecutionRetentionPeriod: msToTs(`${env.CHOIROS_TEMPORAL_RETENTION_DAYS} days`),
  });
  logger.info(
    {
      event: 'temporal.setup.namespace_created',
      namespace: env.TEMPORAL_NAMESPACE,
      retentionDays: env.CHOIROS_TEMPORAL_RETENTION_DAYS,
    },
    'namespace registered',
  );
}

/** Names still missing; throws when one exists with another type (that needs an operator). */
async function missingAttributes(conn: Connection, namespace: string): Promise<string[]> {
  const wanted = requiredSearchAttributes();
  const res = await conn.operatorService.listSearchAttributes({ namespace });
  const existing = res.customAttributes ?? {};
  const missing: string[] = [];
  for (const [name, type] of Object.entries(wanted)) {
    const have = existing[name];
    if (have === undefined || have === null) missing.push(name);
    else if (have !== type)
      throw new SearchAttributeConflictError(
        `search attribute ${name} exists in namespace ${namespace} as ${IndexedValueType[have]}, ` +
          `expected ${IndexedValueType[type]}`,
      );
  }
  return missing;
}

/** Runs the setup; retries transient failures (frontend starting, namespace cache refresh) until the timeout. */
export async function runTemporalSetup(env: TemporalSetupEnv, logger: Logger): Promise<void> {
  const deadline = Date.now() + env.CHOIROS_TEMPORAL_SETUP_TIMEOUT_SECONDS * 1000;
  let lastError: unknown;
  const security = await temporalConnectionSecurity(env);
  while (Date.now() < deadline) {
    let conn: Connection | undefined;
    try {
      conn = await Connection.connect({
        address: env.TEMPORAL_ADDRESS,
        connectTimeout: '5 seconds',
        ...security,
      });
      await ensureNamespace(conn, env, logger);
      const missing = await missingAttributes(conn, env.TEMPORAL_NAMESPACE);
      if (missing.length === 0) {
        logger.info(
          {
            event: 'temporal.setup.done',
            namespace: env.TEMPORAL_NAMESPACE,
            searchAttributes: Object.keys(requiredSearchAttributes()),
          },
          'namespace and search attributes in place',
        );
        return;
      }
      const wanted = requiredSearchAttributes();
      await conn.operatorService.addSearchAttributes({
        namespace: env.TEMPORAL_NAMESPACE,
        searchAttributes: Object.fromEntries(
          missing.flatMap((n) => (wanted[n] === undefined ? [] : [[n, wanted[n]] as const])),
        ),
      });
      logger.info(
        {
          event: 'temporal.setup.search_attributes_added',
          namespace: env.TEMPORAL_NAMESPACE,
          added: missing,
        },
        'search attributes added',
      );
      lastError = undefined;
    } catch (err) {
      if (err instanceof SearchAttributeConflictError) throw err;
      lastError = err;
      logger.warn(
        { event: 'temporal.setup.retry', err: err instanceof Error ? err.message : String(err) },
        'Temporal not ready yet; retrying',
      );
    } finally {
      await conn?.close().catch(() => undefined);
    }
    await sleep(2000);
  }
  throw new Error(
    `Temporal setup did not finish within ${env.CHOIROS_TEMPORAL_SETUP_TIMEOUT_SECONDS}s at ${env.TEMPORAL_ADDRESS}` +
      (lastError instanceof Error ? `: ${lastError.message}` : ''),
  );
}

async function main(): Promise<void> {
  const parsed = temporalSetupEnvSchema.safeParse(process.env);
  if (!parsed.success) {
    throw new Error(
      `invalid configuration:\n${parsed.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`).join('\n')}`,
    );
  }
  await runTemporalSetup(parsed.data, pino({ base: { service: 'choiros-temporal-setup' } }));
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`temporal-setup: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
