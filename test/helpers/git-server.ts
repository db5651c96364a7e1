/**
 * A git server on loopback for tests: the installed git's `git http-backend` (smart HTTP, fetch and
 * push) behind a small Node HTTP server that checks basic or bearer credentials. It records each
 * request (method, repository, service; never a header value) so tests can count fetches.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';

export interface GitServerRequest {
  method: string;
  /** The path after the host, e.g. `/acme/app.git/info/refs`. */
  path: string;
  /** `git-upload-pack` (fetch) or `git-receive-pack` (push), when the request names one. */
  service?: string;
  /** The user the server authenticated, or undefined for a refused request. */
  user?: string;
  status: number;
}

export interface GitServer {
  /** `http://127.0.0.1:<port>` */
  url: string;
  /** The directory holding the bare repositories. */
  root: string;
  requests: GitServerRequest[];
  /** `GET …/info/refs?service=git-upload-pack` requests for `repoPath` (one per fetch or ls-remote). */
  fetchCount(repoPath: string): number;
  /** Creates a bare repository at `repoPath` (e.g. `acme/app.git`) holding `files` on `main`. */
  createRepo(repoPath: string, files: Record<string, string>): { url: string; head: string; dir: string };
  /** git in a bare repository of the server (for assertions). */
  git(repoPath: string, ...args: string[]): string;
  close(): Promise<void>;
}

const HEADER_END = /\r?\n\r?\n/;

/**
 * Starts the server. `tokens` maps a token to the user it authenticates: a request must carry it as
 * `Authorization: Bearer <token>` or as the password of basic auth (any user name).
 */
export async function startGitServer(opts: {
  tokens: Record<string, string>;
  workDir: string;
}): Promise<GitServer> {
  const root = await mkdtemp(join(opts.workDir, 'git-server-'));
  const home = await mkdtemp(join(opts.workDir, 'git-server-home-'));
  const requests: GitServerRequest[] = [];
  const env = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: home,
    GIT_CONFIG_NOSYSTEM: '1',
    GIT_CONFIG_GLOBAL: '/dev/null',
    GIT_PROJECT_ROOT: root,
    GIT_HTTP_EXPORT_ALL: '1',
  };

  const userOf = (req: IncomingMessage): string | undefined => {
    const h = req.headers.authorization ?? '';
    const bearer = /^Bearer (.+)$/.exec(h);
    if (bearer?.[1]) return opts.tokens[bearer[1]];
    const basic = /^Basic (.+)$/.exec(h);
    if (basic?.[1]) {
      const decoded = Buffer.from(basic[1], 'base64').toString('utf8');
      const password = decoded.slice(decoded.indexOf(':') + 1);
      return opts.tokens[password];
    }
    return undefined;
  };

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const service =
      url.searchParams.get('service') ?? /\/(git-[a-z-]+)$/.exec(url.pathname)?.[1] ?? undefined;
    const user = userOf(req);
    const entry: GitServerRequest = {
      method: req.method ?? 'GET',
      path: url.pathname,
      ...(service ? { service } : {}),
      ...(user ? { user } : {}),
      status: 0,
    };
    requests.push(entry);
    if (!user) {
      entry.status = 401;
      res.writeHead(401, { 'www-authenticate': 'Basic realm="git"', 'content-type': 'text/plain' });
      res.end('authentication required\n');
      return;
    }
    const cgi = spawn('git', ['http-backend'], {
      env: {
        ...env,
        REQUEST_METHOD: req.method ?? 'GET',
        PATH_INFO: decodeURIComponent(url.pathname),
        QUERY_STRING: url.search.slice(1),
        CONTENT_TYPE: req.headers['content-type'] ?? '',
        REMOTE_USER: user,
        REMOTE_ADDR: '127.0.0.1',
        ...(req.headers['content-encoding']
          ? { HTTP_CONTENT_ENCODING: req.headers['content-encoding'] }
          : {}),
        ...(req.headers['git-protocol'] ? { GIT_PROTOCOL: String(req.headers['git-protocol']) } : {}),
      },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    req.pipe(cgi.stdin);
    cgi.stdin.on('error', () => undefined);
    let head = Buffer.alloc(0);
    let headersSent = false;
    cgi.stdout.on('data', (chunk: Buffer) => {
      if (headersSent) {
        res.write(chunk);
        return;
      }
      head = Buffer.concat([head, chunk]);
      const text = head.toString('latin1');
      const m = HEADER_END.exec(text);
      if (!m) return;
      const headerLines = text.slice(0, m.index).split(/\r?\n/);
      let status = 200;
      const headers: Record<string, string> = {};
      for (const line of headerLines) {
        const i = line.indexOf(':');
        if (i < 0) continue;
        const k = line.slice(0, i).trim();
        const v = line.slice(i + 1).trim();
        if (k.toLowerCase() === 'status') status = Number(v.split(' ')[0]) || 200;
        else headers[k] = v;
      }
      entry.status = status;
      res.writeHead(status, headers);
      headersSent = true;
      const rest = head.subarray(Buffer.byteLength(text.slice(0, m.index + m[0].length), 'latin1'));
      if (rest.length > 0) res.write(rest);
    });
    cgi.stderr.resume();
    cgi.on('close', () => {
      if (!headersSent) {
        entry.status = 500;
        res.writeHead(500);
      }
      res.end();
    });
  };

  const server: Server = createServer(handle);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const gitIn = (dir: string, ...args: string[]): string =>
    execFileSync(
      'git',
      ['-c', 'safe.directory=*', '-c', 'user.name=Test', '-c', 'user.email=t@example.invalid', ...args],
      {
        cwd: dir,
        encoding: 'utf8',
        env: { ...env },
      },
    ).trim();

  return {
    url: base,
    root,
    requests,
    fetchCount: (repoPath) =>
      requests.filter(
        (r) =>
          r.method === 'GET' &&
          r.path === `/${repoPath}/info/refs` &&
          r.service === 'git-upload-pack' &&
          r.status === 200,
      ).length,
    createRepo(repoPath, files) {
      const dir = join(root, repoPath);
      execFileSync('git', ['init', '-q', '--bare', '-b', 'main', dir], { env });
      const work = execFileSync('mktemp', ['-d', join(opts.workDir, 'git-seed-XXXXXX')], {
        encoding: 'utf8',
      }).trim();
      gitIn(work, 'init', '-q', '-b', 'main');
      for (const [name, content] of Object.entries(files)) {
        mkdirSync(dirname(join(work, name)), { recursive: true });
        writeFileSync(join(work, name), content);
      }
      gitIn(work, 'add', '.');
      gitIn(work, 'commit', '-qm', 'initial');
      gitIn(work, 'push', '-q', dir, 'main');
      return { url: `${base}/${repoPath}`, head: gitIn(work, 'rev-parse', 'HEAD'), dir };
    },
    git: (repoPath, ...args) => gitIn(join(root, repoPath), ...args),
    async close() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
