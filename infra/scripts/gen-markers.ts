/**
 * Generated blocks inside a hand-written markdown file: the text between
 * `<!-- BEGIN GENERATED: name -->` and `<!-- END GENERATED: name -->` is replaced by the generator's
 * output, the prose around it is kept as it is.
 */

/** Replaces every named block; throws when a block is missing, so a removed marker cannot go unnoticed. */
export function fillGeneratedBlocks(markdown: string, blocks: Record<string, string>): string {
  let out = markdown;
  for (const [name, body] of Object.entries(blocks)) {
    const begin = `<!-- BEGIN GENERATED: ${name} -->`;
    const end = `<!-- END GENERATED: ${name} -->`;
    const a = out.indexOf(begin);
    const b = out.indexOf(end);
    if (a < 0 || b < a)
      throw new Error(`generated block "${name}" is missing its markers (${begin} … ${end})`);
    out = `${out.slice(0, a + begin.length)}\n\n${body.trim()}\n\n${out.slice(b)}`;
  }
  return out;
}

/** A markdown table cell: no line breaks, pipes escaped. */
export const cell = (s: string): string => s.replace(/\|/g, '\\|').replace(/\s*\n\s*/g, ' ');

export function markdownTable(head: string[], rows: string[][]): string {
  return [
    `| ${head.join(' | ')} |`,
    `| ${head.map(() => '---').join(' | ')} |`,
    ...rows.map((r) => `| ${r.map(cell).join(' | ')} |`),
  ].join('\n');
}
