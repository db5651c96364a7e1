/** `npm run token -- --sub <user> [--tenant <t>] [--scope "<scopes>"] [--ttl <s>]`: prints a dev token. */
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { isValidId } from '../../contracts';
import { DEFAULT_DEV_SCOPES, loadOrCreateDevKey, mintDevToken, readDevIssuerInfo } from './issuer';

const USAGE =
  'usage: npm run token -- --sub <user> [--tenant <tenant>] [--scope "<scopes>"] [--ttl <seconds>]';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      sub: { type: 'string' },
      tenant: { type: 'string' },
      scope: { type: 'string' },
      ttl: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (!values.sub || !isValidId(values.sub))
    throw new Error(`--sub is required and must match ^[A-Za-z0-9_-]{1,64}$\n${USAGE}`);
  if (values.tenant !== undefined && !isValidId(values.tenant))
    throw new Error('--tenant must match ^[A-Za-z0-9_-]{1,64}$');
  const ttl = values.ttl === undefined ? 3600 : Number(values.ttl);
  if (!Number.isInteger(ttl) || ttl < 1 || ttl > 30 * 24 * 3600)
    throw new Error('--ttl must be a whole number of seconds (1..2592000)');
  const dataDir = resolve(process.env.CHOIROS_DATA_DIR ?? '.data');
  const dir = join(dataDir, 'dev-issuer');
  if (process.env.AUTH_ISSUER) {
    throw new Error('AUTH_ISSUER is set: tokens come from that issuer, not from the local dev issuer');
  }
  const info = await readDevIssuerInfo(dir).catch(() => {
    throw new Error(`no dev issuer found under ${dir}: run \`npm start\` first (it creates the dev issuer)`);
  });
  const key = await loadOrCreateDevKey(dir);
  const token = await mintDevToken(key, info, {
    sub: values.sub,
    tenant: values.tenant,
    scope: values.scope ?? DEFAULT_DEV_SCOPES,
    ttlSeconds: ttl,
  });
  process.stdout.write(`${token}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`token: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
