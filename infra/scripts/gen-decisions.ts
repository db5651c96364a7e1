/**
 * The generated decision list of docs/architecture.md: every record in docs/decisions/ with its
 * number, title and the default it sets (the record's `**Default:**` line).
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { formatMarkdown } from './gen-markdown';
import { fillGeneratedBlocks, markdownTable } from './gen-markers';

export const ARCHITECTURE_DOC = resolve(__dirname, '../../docs/architecture.md');
const DECISIONS_DIR = resolve(__dirname, '../../docs/decisions');

export interface DecisionRecord {
  number: string;
  file: string;
  title: string;
  /** The record's `**Default:**` paragraph; undefined when it has none. */
  default?: string;
}

/** Parses one record: `# NNNN — Title`, then optionally a `**Default:** …` paragraph. */
export function parseDecision(file: string, text: string): DecisionRecord {
  const number = /^(\d{4})-/.exec(file)?.[1];
  if (!number) throw new Error(`docs/decisions/${file}: the name must start with a four-digit number`);
  const heading = /^# (.+)$/m.exec(text)?.[1];
  if (!heading) throw new Error(`docs/decisions/${file}: no "# ${number} — title" heading`);
  const title = heading.replace(new RegExp(`^${number}\\s*[—–-]\\s*`), '');
  const start = /^\*\*Default:\*\*\s+/m.exec(text);
  const def = start ? text.slice(start.index + start[0].length).split(/\n\s*\n/)[0] : undefined;
  return { number, file, title, default: def?.replace(/\s*\n\s*/g, ' ').trim() };
}

export function decisionRecords(dir = DECISIONS_DIR): DecisionRecord[] {
  return readdirSync(dir)
    .filter((f) => /^\d{4}-.*\.md$/.test(f))
    .sort()
    .map((f) => parseDecision(f, readFileSync(join(dir, f), 'utf8')));
}

export function decisionTable(records: DecisionRecord[]): string {
  return markdownTable(
    ['Decision', 'Default'],
    records.map((r) => [
      `[${r.number} — ${r.title}](decisions/${r.file})`,
      r.default ?? '_(the record has no `**Default:**` line yet)_',
    ]),
  );
}

/** docs/architecture.md with its decision list filled from docs/decisions/. */
export function renderArchitectureDoc(current = readFileSync(ARCHITECTURE_DOC, 'utf8')): string {
  return formatMarkdown(
    fillGeneratedBlocks(current, { decisions: decisionTable(decisionRecords()) }),
    ARCHITECTURE_DOC,
  );
}
