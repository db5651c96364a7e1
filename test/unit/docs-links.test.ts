/**
 * The docs hold together: every relative link in README.md and docs/ resolves to a file (and to a
 * heading, when it names one), every repository path docs/architecture.md names exists, and the
 * README stays a front page (≤ 10 KB).
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const ROOT = join(__dirname, '../..');

function markdownFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return markdownFiles(path);
    return name.endsWith('.md') ? [path] : [];
  });
}

/** Markdown without fenced code blocks and inline code, where link syntax is not a link. */
function prose(text: string): string {
  return text.replace(/^(```|~~~)[\s\S]*?^\1/gm, '').replace(/`[^`\n]*`/g, '');
}

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered. */
export function headingAnchors(text: string): Set<string> {
  const seen = new Map<string, number>();
  const anchors = new Set<string>();
  const body = text.replace(/^(```|~~~)[\s\S]*?^\1/gm, '');
  for (const m of body.matchAll(/^#{1,6}\s+(.+?)\s*#*\s*$/gm)) {
    const slug = (m[1] ?? '')
      .replace(/\[([^\]]*)\]\([^)]*\)/g, '$1')
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, '')
      .replace(/\s/g, '-');
    const n = seen.get(slug) ?? 0;
    seen.set(slug, n + 1);
    anchors.add(n === 0 ? slug : `${slug}-${n}`);
  }
  return anchors;
}

/** The relative link targets of a markdown file (external URLs left out). */
export function relativeLinks(text: string): string[] {
  return [...prose(text).matchAll(/!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)]
    .map((m) => m[1] ?? '')
    .filter((t) => !/^[a-z][a-z0-9+.-]*:/i.test(t));
}

/** The broken relative links of one markdown file, as `target (reason)`. */
export function brokenLinks(file: string, text: string): string[] {
  const broken: string[] = [];
  for (const target of relativeLinks(text)) {
    const [pathPart = '', anchor] = target.split('#');
    const path = pathPart === '' ? file : resolve(dirname(file), decodeURIComponent(pathPart));
    if (pathPart !== '' && !existsSync(path)) {
      broken.push(`${target} (no such file)`);
      continue;
    }
    const headings = pathPart === '' ? text : path.endsWith('.md') ? readFileSync(path, 'utf8') : undefined;
    if (anchor && headings !== undefined && !headingAnchors(headings).has(anchor))
      broken.push(`${target} (no such heading)`);
  }
  return broken;
}

describe('docs links', () => {
  const files = [join(ROOT, 'README.md'), ...markdownFiles(join(ROOT, 'docs'))];

  test('when README.md and docs/ link to each other, then every relative link resolves', () => {
    expect(files.length).toBeGreaterThan(10);
    expect(files.flatMap((f) => relativeLinks(readFileSync(f, 'utf8'))).length).toBeGreaterThan(50);
    const broken = files.flatMap((f) =>
      brokenLinks(f, readFileSync(f, 'utf8')).map((b) => `${relative(ROOT, f)}: ${b}`),
    );
    expect(broken).toEqual([]);
  });

  test('when a link points at a missing file or heading, then the check reports it', () => {
    const file = join(ROOT, 'docs', 'example.md');
    const text = [
      '# Example',
      '[ok](architecture.md) [ok too](#example) [fine](https://example.com/x)',
      '[gone](no-such-page.md) [bad anchor](architecture.md#no-such-heading)',
      '`[not a link](inside-code.md)`',
    ].join('\n');
    expect(brokenLinks(file, text)).toEqual([
      'no-such-page.md (no such file)',
      'architecture.md#no-such-heading (no such heading)',
    ]);
  });

  test('when headings repeat or carry code and punctuation, then anchors follow GitHub', () => {
    expect([
      ...headingAnchors('# What `npm start` and `npm test` set up\n## Runs: moods, x\n## Runs: moods, x'),
    ]).toEqual(['what-npm-start-and-npm-test-set-up', 'runs-moods-x', 'runs-moods-x-1']);
  });

  test('when docs/architecture.md names a repository path, then it exists', () => {
    const text = readFileSync(join(ROOT, 'docs/architecture.md'), 'utf8');
    const named = [
      ...text.matchAll(
        /\b((?:api|worker|workflows|activities|contracts|tenancy|telemetry|infra|test|bench|bin)\/[A-Za-z0-9_./-]*)/g,
      ),
    ].map((m) => (m[1] ?? '').replace(/[.,)]+$/, ''));
    expect(named.length).toBeGreaterThan(30);
    expect([...new Set(named)].filter((p) => !existsSync(join(ROOT, p)))).toEqual([]);
  });

  test('when the README is read, then it is a front page of at most 10 KB', () => {
    expect(statSync(join(ROOT, 'README.md')).size).toBeLessThanOrEqual(10 * 1024);
  });
});
