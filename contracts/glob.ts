/** Path scope matching for verifier plans: prefix scopes and globs, pure and deterministic. */

/**
 * Compiles a glob to a RegExp. `*` and `?` stay within one path segment, `**` crosses segments
 * (`a/**` matches everything under `a/`, `**\/x` matches `x` at any depth), `[...]` is a class.
 * Dots are ordinary characters: `.github/*` matches `.github/ci.yml`, and `*` matches dotfiles.
 */
export function globToRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i] ?? '';
    if (c === '*') {
      if (glob[i + 1] === '*') {
        i++;
        if (glob[i + 1] === '/') {
          i++;
          re += '(?:.*/)?';
        } else {
          re += '.*';
        }
      } else {
        re += '[^/]*';
      }
    } else if (c === '?') {
      re += '[^/]';
    } else if (c === '[') {
      const close = glob.indexOf(']', i + 2);
      if (close === -1) {
        re += '\\[';
      } else {
        let body = glob.slice(i + 1, close);
        const negate = body.startsWith('!') || body.startsWith('^');
        if (negate) body = body.slice(1);
        body = body.replace(/[\\\]^]/g, (m) => `\\${m}`);
        re += negate ? `[^/${body}]` : `[${body}]`;
        i = close;
      }
    } else {
      re += c.replace(/[.+^${}()|\\\]]/g, (m) => `\\${m}`);
    }
  }
  return new RegExp(`^${re}$`);
}

/** True when `path` (repository-relative, `/`-separated) falls under `scope`: a `/`-ending scope is a prefix, anything else a glob. */
export function scopeMatches(scope: string, path: string): boolean {
  if (scope.endsWith('/')) return path.startsWith(scope);
  return globToRegExp(scope).test(path);
}
