/** `.dockerignore` semantics for build contexts: patterns, `!` exceptions, last match wins, directories cover their contents. */
import { globToRegExp } from '../../contracts';

interface Rule {
  re: RegExp;
  exclude: boolean;
}

/** Parses `.dockerignore` text into ordered rules (comments and blank lines dropped, paths cleaned). */
export function parseDockerignore(text: string): Rule[] {
  const rules: Rule[] = [];
  for (const raw of text.split(/\r?\n/)) {
    let line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const exclude = !line.startsWith('!');
    if (!exclude) line = line.slice(1).trim();
    line = line.replace(/^\/+/, '').replace(/\/+$/, '').replace(/^\.\//, '');
    if (!line || line === '.') continue;
    rules.push({ re: globToRegExp(line), exclude });
  }
  return rules;
}

/** True when `path` (context-relative, `/`-separated) is excluded: it or one of its parent directories matches. */
export function isIgnored(rules: Rule[], path: string): boolean {
  const parts = path.split('/');
  let ignored = false;
  for (const rule of rules) {
    for (let i = 1; i <= parts.length; i++) {
      if (rule.re.test(parts.slice(0, i).join('/'))) {
        ignored = rule.exclude;
        break;
      }
    }
  }
  return ignored;
}
