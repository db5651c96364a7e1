/**
 * The generated docs (docs/configuration.md, docs/api.md, the decision list of
 * docs/architecture.md) are what `npm run docs:gen` writes from the code, and every environment
 * variable the source reads is documented in docs/configuration.md.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { z } from 'zod';
import { generatedDocs } from '../../infra/scripts/gen-docs';
import { OTHER_VARIABLES, documentedVariables, schemaVariables } from '../../infra/scripts/gen-config-doc';
import { apiConfigSchema } from '../../api/config';
import { documentedRoutes } from '../../api/openapi';
import { API_DOC } from '../../infra/scripts/gen-api-doc';
import { fillGeneratedBlocks } from '../../infra/scripts/gen-markers';
import { decisionRecords, parseDecision } from '../../infra/scripts/gen-decisions';
import { workerConfigSchema } from '../../worker/config';

const ROOT = join(__dirname, '../..');

/** Files whose environment reads must all be documented: the platform's code, its launcher scripts and the test harness. */
const SCANNED_DIRS = [
  'api',
  'worker',
  'activities',
  'workflows',
  'contracts',
  'tenancy',
  'telemetry',
  'infra',
  'bin',
  'test/helpers',
  'test/faults',
];
const SCANNED_SCRIPTS = [
  'infra/scripts/start.sh',
  'infra/scripts/test.sh',
  'infra/scripts/provision.sh',
  'infra/scripts/node-entry.sh',
];

function walk(dir: string, keep: (path: string) => boolean): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (name === 'node_modules') return [];
    if (statSync(path).isDirectory()) return walk(path, keep);
    return keep(path) ? [path] : [];
  });
}

/** The environment variables a TypeScript/JavaScript source reads. */
export function codeEnvReads(text: string): string[] {
  const patterns = [
    /process\.env\.([A-Z][A-Z0-9_]*)/g,
    /process\.env\[\s*['"]([A-Z][A-Z0-9_]*)['"]\s*\]/g,
    /\benv\??\.([A-Z][A-Z0-9_]*)\b/g,
    /\benvInt\(\s*'([A-Z][A-Z0-9_]*)'/g,
  ];
  return [...new Set(patterns.flatMap((p) => [...text.matchAll(p)].map((m) => m[1] ?? '')))];
}

/** The environment variables a shell script takes with a fallback (`${NAME:-…}`). */
export function shellEnvReads(text: string): string[] {
  return [...new Set([...text.matchAll(/\$\{([A-Z][A-Z0-9_]*):-/g)].map((m) => m[1] ?? ''))];
}

/** The variables docker-compose.yml interpolates (`${NAME}`, `${NAME:-…}`, `${NAME:?…}`). */
export function composeEnvReads(text: string): string[] {
  return [...new Set([...text.matchAll(/\$\{([A-Z][A-Z0-9_]*)(?::?[-?][^}]*)?\}/g)].map((m) => m[1] ?? ''))];
}

const isCode = (p: string): boolean => /\.(ts|js|mjs|cjs)$/.test(p) && !/\.test\.ts$/.test(p);

function scannedReads(): Map<string, string[]> {
  const reads = new Map<string, string[]>();
  const add = (names: string[], file: string): void => {
    for (const n of names) reads.set(n, [...(reads.get(n) ?? []), relative(ROOT, file)]);
  };
  for (const dir of SCANNED_DIRS)
    for (const file of walk(join(ROOT, dir), isCode)) add(codeEnvReads(readFileSync(file, 'utf8')), file);
  for (const script of SCANNED_SCRIPTS) add(shellEnvReads(readFileSync(join(ROOT, script), 'utf8')), script);
  return reads;
}

describe('generated docs', () => {
  test('when the code they are generated from changes, then the generated docs were regenerated (npm run docs:gen)', () => {
    const docs = generatedDocs();
    expect(docs.length).toBeGreaterThanOrEqual(1);
    for (const [file, text] of docs) {
      const onDisk = readFileSync(file, 'utf8');
      if (onDisk !== text) throw new Error(`${relative(ROOT, file)} is stale: run npm run docs:gen`);
    }
  });
});

describe('api doc', () => {
  test('when docs/api.md is read, then every route of the OpenAPI document is in its route table', () => {
    const text = readFileSync(API_DOC, 'utf8');
    const routes = documentedRoutes();
    expect(routes.length).toBeGreaterThan(15);
    expect(routes.filter((r) => !text.includes(`\`${r}\``))).toEqual([]);
  });

  test('when a generated block lost its markers, then the generator refuses to write, naming the block', () => {
    const doc = 'prose\n<!-- BEGIN GENERATED: routes -->\nold\n<!-- END GENERATED: routes -->\nmore prose\n';
    expect(fillGeneratedBlocks(doc, { routes: 'new' })).toBe(
      'prose\n<!-- BEGIN GENERATED: routes -->\n\nnew\n\n<!-- END GENERATED: routes -->\nmore prose\n',
    );
    expect(() => fillGeneratedBlocks('prose only\n', { routes: 'new' })).toThrow(/routes/);
  });
});

describe('decision list', () => {
  test('when a record has a Default line, then the list shows its title and default; without one, it says so', () => {
    const withDefault = parseDecision(
      '0099-example.md',
      '# 0099 — An example\n\n**Default:** the pool is off;\n  on with a size.\n\n## Context\n',
    );
    expect(withDefault).toEqual({
      number: '0099',
      file: '0099-example.md',
      title: 'An example',
      default: 'the pool is off; on with a size.',
    });
    expect(parseDecision('0098-x.md', '# 0098 — X\n\n## Context\n').default).toBeUndefined();
    expect(() => parseDecision('notes.md', '# Notes')).toThrow(/four-digit/);
  });

  test('when docs/architecture.md is read, then it links every decision record', () => {
    const records = decisionRecords();
    expect(records.length).toBeGreaterThanOrEqual(21);
    const text = readFileSync(join(ROOT, 'docs/architecture.md'), 'utf8');
    expect(records.filter((r) => !text.includes(`(decisions/${r.file})`)).map((r) => r.file)).toEqual([]);
  });
});

describe('configuration doc', () => {
  test('when a config key has no .describe() text, then the generator refuses it, naming the key', () => {
    const schema = z.object({
      DOCUMENTED: z.string().default('x').describe('has a text'),
      UNDOCUMENTED_KEY: z.coerce.number().default(1),
    });
    expect(() => schemaVariables(schema)).toThrow(/UNDOCUMENTED_KEY/);
  });

  test('when the api and worker schemas are read, then every key has a text, and defaults and ranges come from the schema', () => {
    const api = schemaVariables(apiConfigSchema);
    const worker = schemaVariables(workerConfigSchema);
    expect(api.length).toBeGreaterThan(30);
    expect(worker.length).toBeGreaterThan(30);
    const port = api.find((r) => r.name === 'API_PORT');
    expect(port).toMatchObject({ default: '`8080`', accepts: 'integer 0–65535' });
    expect(api.find((r) => r.name === 'AUTH_ISSUER')?.default).toBe('**required**');
    expect(worker.find((r) => r.name === 'CHOIROS_SANDBOX_DRIVER')?.accepts).toBe('`docker`, `local`');
    // A machine-dependent default (the host name, the repository's absolute path) never reaches the doc.
    expect(worker.find((r) => r.name === 'CHOIROS_HOST_ID')?.default).toBe('the host name');
    expect(worker.find((r) => r.name === 'CHOIROS_TENANTS_FILE')?.default).toBe(
      '`infra/tenants.default.yaml`',
    );
  });

  test('when the source reads an environment variable, then docs/configuration.md documents it', () => {
    const documented = documentedVariables();
    const reads = scannedReads();
    expect(reads.size).toBeGreaterThan(50);
    const undocumented = [...reads]
      .filter(([name]) => !documented.has(name))
      .map(([n, f]) => `${n} (${f[0]})`);
    expect(undocumented).toEqual([]);
  });

  test('when the compose stack or an infra script takes a variable, then configuration.md or production.md documents it', () => {
    const documented = documentedVariables();
    const production = readFileSync(join(ROOT, 'docs/production.md'), 'utf8');
    const files = [join(ROOT, 'docker-compose.yml'), ...walk(join(ROOT, 'infra'), (p) => p.endsWith('.sh'))];
    const taken = files.flatMap((f) => {
      const text = readFileSync(f, 'utf8');
      const names = f.endsWith('.yml') ? composeEnvReads(text) : shellEnvReads(text);
      return names.map((n) => [n, relative(ROOT, f)] as const);
    });
    expect(taken.length).toBeGreaterThan(40);
    const undocumented = taken.filter(
      ([n]) => !documented.has(n) && !new RegExp(`\\b${n}\\b`).test(production),
    );
    expect(undocumented).toEqual([]);
  });

  test('when a variable is listed outside a schema, then something still reads it (no stale rows)', () => {
    const corpus = [
      ...SCANNED_DIRS.flatMap((d) => walk(join(ROOT, d), isCode)),
      ...walk(join(ROOT, 'test'), (p) => /\.ts$/.test(p)),
      ...walk(join(ROOT, 'infra'), (p) => /\.sh$/.test(p)),
    ]
      .map((f) => readFileSync(f, 'utf8'))
      .join('\n');
    const { tracingLibrary: _readByTheSdk, ...ours } = OTHER_VARIABLES;
    const listed = Object.values(ours).flatMap((rows) =>
      rows.flatMap((r) => [...r.name.matchAll(/[A-Z][A-Z0-9_]{2,}/g)].map((m) => m[0])),
    );
    const unread = listed.filter((n) => !new RegExp(`\\b${n}\\b`).test(corpus));
    expect(unread).toEqual([]);
  });

  test('when a source reads a variable in any of the ways the scan knows, then the scan finds it', () => {
    const code = [
      'const a = process.env.ONE_VAR;',
      "const b = process.env['TWO_VAR'];",
      'const c = env.THREE_VAR ?? opts.env?.FOUR_VAR;',
      "const d = envInt('FIVE_VAR', 1);",
    ].join('\n');
    expect(codeEnvReads(code).sort()).toEqual(['FIVE_VAR', 'FOUR_VAR', 'ONE_VAR', 'THREE_VAR', 'TWO_VAR']);
    expect(shellEnvReads('X="${SIX_VAR:-/tmp}"; Y=$OTHER')).toEqual(['SIX_VAR']);
    expect(composeEnvReads('image: ${SEVEN_VAR:-x}\n  pw: ${EIGHT_VAR:?set it}\n  t: ${NINE_VAR}')).toEqual([
      'SEVEN_VAR',
      'EIGHT_VAR',
      'NINE_VAR',
    ]);
    expect(documentedVariables().has('ONE_VAR')).toBe(false);
  });
});
