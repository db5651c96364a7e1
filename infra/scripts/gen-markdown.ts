/**
 * Shared by the docs generators: formats generated markdown exactly as `prettier --check` (part of
 * `npm test`) expects it. Prettier runs as its own process (its CommonJS entry loads ES modules,
 * which jest's module runtime cannot), reading the text on stdin.
 */
import { execFileSync } from 'node:child_process';
import { resolve } from 'node:path';

const PRETTIER = require.resolve('prettier/bin/prettier.cjs');

/** `file` picks the prettier config and parser; it need not exist. */
export function formatMarkdown(markdown: string, file: string): string {
  return execFileSync(process.execPath, [PRETTIER, '--stdin-filepath', resolve(file)], {
    input: markdown,
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
}
