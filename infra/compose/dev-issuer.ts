/**
 * The dev OIDC issuer of a compose stack started without AUTH_ISSUER (infra/compose/dev-issuer.yml,
 * `npm run compose:up`): runs next to the API inside the api container, on the container's
 * loopback (the API accepts http issuers only on loopback), with its key in the `dev-issuer` volume
 * so a replaced api container keeps verifying the tokens minted before.
 *
 *   node --import tsx infra/compose/dev-issuer.ts serve [--dir D] [--port P]
 *   node --import tsx infra/compose/dev-issuer.ts mint --sub S [--tenant T] [--scope "..."] [--ttl N] [--dir D]
 */
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { isValidId } from '../../contracts';
import {
  DEFAULT_DEV_SCOPES,
  DEV_AUDIENCE,
  loadOrCreateDevKey,
  mintDevToken,
  readDevIssuerInfo,
  serveDevIssuer,
  writeDevIssuerInfo,
} from '../dev-issuer/issuer';

const DEFAULT_DIR = '/run/choiros/dev-issuer';
const USAGE =
  'usage: dev-issuer.ts serve [--dir D] [--port P] | mint --sub S [--tenant T] [--scope "..."] [--ttl N] [--dir D]';

const argsSchema = z.object({
  dir: z.string().min(1).default(DEFAULT_DIR),
  port: z.coerce.number().int().min(1).max(65535).default(8091),
  sub: z.string().refine(isValidId, 'must match ^[A-Za-z0-9_-]{1,64}$').optional(),
  tenant: z.string().refine(isValidId, 'must match ^[A-Za-z0-9_-]{1,64}$').optional(),
  scope: z.string().min(1).default(DEFAULT_DEV_SCOPES),
  ttl: z.coerce
    .number()
    .int()
    .min(1)
    .max(30 * 24 * 3600)
    .default(12 * 3600),
});

async function main(): Promise<void> {
  const { positionals, values } = parseArgs({
    allowPositionals: true,
    options: {
      dir: { type: 'string' },
      port: { type: 'string' },
      sub: { type: 'string' },
      tenant: { type: 'string' },
      scope: { type: 'string' },
      ttl: { type: 'string' },
    },
    strict: true,
  });
  const opts = argsSchema.parse(values);
  const key = await loadOrCreateDevKey(opts.dir);
  if (positionals[0] === 'serve') {
    const issuer = await serveDevIssuer({ key, host: '127.0.0.1', port: opts.port });
    await writeDevIssuerInfo(opts.dir, { issuer: issuer.issuer, audience: DEV_AUDIENCE });
    process.stdout.write(`dev issuer at ${issuer.issuer}\n`);
    const stop = (): void => void issuer.close().then(() => process.exit(0));
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    return;
  }
  if (positionals[0] === 'mint') {
    if (!opts.sub) throw new Error(`--sub is required\n${USAGE}`);
    const info = await readDevIssuerInfo(opts.dir).catch(() => ({
      issuer: `http://127.0.0.1:${opts.port}`,
      audience: DEV_AUDIENCE,
    }));
    const token = await mintDevToken(key, info, {
      sub: opts.sub,
      tenant: opts.tenant ?? 'default',
      scope: opts.scope,
      ttlSeconds: opts.ttl,
    });
    process.stdout.write(`${token}\n`);
    return;
  }
  throw new Error(USAGE);
}

main().catch((err: unknown) => {
  process.stderr.write(`dev-issuer: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
