/**
 * The generated parts of docs/api.md: the route table and the body schemas from api/openapi.ts (the
 * document `GET /openapi.json` serves, built from the zod schemas the routes validate with), and the
 * error codes from contracts/errors.ts. The prose around them is hand-written in docs/api.md.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { ERROR_CODES, HTTP_STATUS_BY_CODE, TITLE_BY_CODE } from '../../contracts';
import { openApiDocument } from '../../api/openapi';
import { formatMarkdown } from './gen-markdown';
import { fillGeneratedBlocks, markdownTable } from './gen-markers';

export const API_DOC = resolve(__dirname, '../../docs/api.md');

type Json = Record<string, unknown>;

const refName = (ref: string): string => ref.replace('#/components/schemas/', '');
const anchor = (name: string): string => `[${name}](#${name.toLowerCase()})`;
const isSafeBound = (n: unknown): n is number =>
  typeof n === 'number' && Math.abs(n) < Number.MAX_SAFE_INTEGER;

/** A JSON Schema as a short type: `string`, `` `a` \| `b` ``, `integer ≥ 1`, `RunView`, `string[]`. */
function typeOf(s: Json): string {
  if (typeof s.$ref === 'string') return anchor(refName(s.$ref));
  const alts = (s.anyOf ?? s.oneOf) as Json[] | undefined;
  if (Array.isArray(alts))
    return alts
      .filter((a) => a.type !== 'null')
      .map(typeOf)
      .join(' or ');
  if (Array.isArray(s.enum))
    return s.enum.length > 10
      ? `string (${s.enum.length} values)`
      : s.enum.map((v) => `\`${String(v)}\``).join(' | ');
  if (s.const !== undefined) return `\`${JSON.stringify(s.const)}\``;
  if (s.type === 'array') return `${typeOf((s.items as Json | undefined) ?? {})}[]`;
  if (s.type === 'object' && s.additionalProperties && typeof s.additionalProperties === 'object')
    return `map of ${typeOf(s.additionalProperties as Json)}`;
  if (Array.isArray(s.type)) return s.type.filter((t) => t !== 'null').join(' or ');
  return typeof s.type === 'string' ? s.type : 'any';
}

/** Defaults and constraints of a field, in words. */
function notes(s: Json): string {
  const out: string[] = [];
  if (s.default !== undefined) out.push(`default \`${JSON.stringify(s.default)}\``);
  if (isSafeBound(s.minimum) && isSafeBound(s.maximum)) out.push(`${s.minimum}–${s.maximum}`);
  else if (isSafeBound(s.minimum)) out.push(`≥ ${s.minimum}`);
  else if (isSafeBound(s.maximum)) out.push(`≤ ${s.maximum}`);
  const span = (lo: unknown, hi: unknown, unit: string): void => {
    if (typeof lo === 'number' || typeof hi === 'number')
      out.push(`${typeof lo === 'number' ? lo : 0}–${typeof hi === 'number' ? hi : '∞'} ${unit}`);
  };
  span(s.minLength, s.maxLength, 'characters');
  span(s.minItems, s.maxItems, 'items');
  if (typeof s.pattern === 'string') out.push(`matches \`${s.pattern}\``);
  if (typeof s.format === 'string') out.push(s.format);
  if (typeof s.description === 'string') out.push(s.description);
  return out.join('; ');
}

/** The fields of an object schema, nested objects and arrays of objects flattened with dotted paths. */
function fields(s: Json, prefix = '', depth = 0): string[][] {
  const props = (s.properties ?? {}) as Record<string, Json>;
  const required = new Set((s.required ?? []) as string[]);
  return Object.entries(props).flatMap(([name, p]) => {
    const path = `${prefix}${name}`;
    const row = [`\`${path}\``, typeOf(p), required.has(name) ? 'yes' : '', notes(p)];
    const items = p.type === 'array' ? (p.items as Json | undefined) : undefined;
    const nested =
      depth >= 2
        ? []
        : p.type === 'object' && p.properties
          ? fields(p, `${path}.`, depth + 1)
          : items?.type === 'object' && items.properties
            ? fields(items, `${path}[].`, depth + 1)
            : [];
    return [row, ...nested];
  });
}

function routeTable(doc: Json): string {
  const paths = doc.paths as Record<string, Record<string, Json>>;
  const rows = Object.entries(paths)
    .sort(([a], [b]) => a.localeCompare(b))
    .flatMap(([path, ops]) =>
      Object.entries(ops).map(([method, op]) => {
        const params = ((op.parameters ?? []) as Json[])
          .filter((p) => p.in !== 'path')
          .map((p) => `${String(p.name)} (${String(p.in)})`);
        const body = op.requestBody as Json | undefined;
        const bodyRef = body
          ? Object.values((body.content ?? {}) as Record<string, { schema?: Json }>)
              .map((c) => (typeof c.schema?.$ref === 'string' ? anchor(refName(c.schema.$ref)) : 'body'))
              .join(', ') + (body.required ? '' : ' (optional)')
          : '';
        const responses = (op.responses ?? {}) as Record<string, Json>;
        const success = Object.entries(responses)
          .filter(([status]) => status.startsWith('2'))
          .map(([status, r]) => {
            const content = Object.entries((r.content ?? {}) as Record<string, { schema?: Json }>);
            const what = content
              .map(([type, c]) =>
                typeof c.schema?.$ref === 'string' ? anchor(refName(c.schema.$ref)) : `\`${type}\``,
              )
              .join(', ');
            return `${status} ${what || String(r.description)}`.trim();
          })
          .join('; ');
        const problems = Object.keys(responses)
          .filter((s) => !s.startsWith('2'))
          .join(', ');
        return [
          `\`${method.toUpperCase()} ${path}\``,
          op.security ? 'bearer' : '–',
          typeof op.summary === 'string' ? op.summary : '',
          [bodyRef, ...params].filter(Boolean).join('; '),
          success,
          problems,
        ];
      }),
    );
  return markdownTable(['Route', 'Auth', 'What it does', 'Takes', 'Answers', 'Problems'], rows);
}

/** The schemas some route takes as its request body. */
function requestBodies(doc: Json): Set<string> {
  const ops = Object.values(doc.paths as Record<string, Record<string, Json>>).flatMap((o) =>
    Object.values(o),
  );
  return new Set(
    ops.flatMap((op) =>
      Object.values(
        ((op.requestBody as Json | undefined)?.content ?? {}) as Record<string, { schema?: Json }>,
      )
        .map((c) => c.schema?.$ref)
        .filter((r): r is string => typeof r === 'string')
        .map(refName),
    ),
  );
}

function schemaTables(doc: Json): string {
  const schemas = (doc.components as { schemas: Record<string, Json> }).schemas;
  const bodies = requestBodies(doc);
  return Object.entries(schemas)
    .map(([name, s]) => {
      const head = `### ${name}`;
      if (!s.properties) return `${head}\n\n${typeOf(s)}${notes(s) ? ` (${notes(s)})` : ''}`;
      const closed =
        bodies.has(name) && s.additionalProperties === false
          ? 'A request body; unknown fields are refused.'
          : bodies.has(name)
            ? 'A request body.'
            : '';
      return `${head}\n\n${closed}\n\n${markdownTable(['Field', 'Type', 'Required', 'Notes'], fields(s))}`;
    })
    .join('\n\n');
}

function errorTable(): string {
  return markdownTable(
    ['Code', 'HTTP status', 'Title'],
    ERROR_CODES.map((c) => [`\`${c}\``, String(HTTP_STATUS_BY_CODE[c]), TITLE_BY_CODE[c]]),
  );
}

/** docs/api.md with its generated blocks filled from the current code. */
export function renderApiDoc(current = readFileSync(API_DOC, 'utf8')): string {
  const doc = openApiDocument();
  const filled = fillGeneratedBlocks(current, {
    routes: routeTable(doc),
    schemas: schemaTables(doc),
    errors: errorTable(),
  });
  return formatMarkdown(filled, API_DOC);
}
