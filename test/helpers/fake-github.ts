/**
 * A local fake of GitHub's REST API, only the pull request routes: `POST /repos/{owner}/{repo}/pulls`
 * (201 with `number` and `html_url`; 422 "A pull request already exists" for a second one with the
 * same head) and `GET …/pulls?head=owner:branch`. It requires `Authorization: Bearer <token>`.
 */
import { createVerify } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FakePull {
  owner: string;
  repo: string;
  number: number;
  title: string;
  head: string;
  base: string;
  body: string;
  html_url: string;
}

export interface FakeGitHub {
  url: string;
  pulls: FakePull[];
  /** Requests refused for a missing or wrong token. */
  refused: number;
  /** Installation tokens minted (`POST /app/installations/{id}/access_tokens`). */
  minted: number;
  close(): Promise<void>;
}

/** A GitHub App the fake knows: its id, public key, and the installation token it hands out. */
export interface FakeApp {
  appId: string;
  installationId: number;
  publicKeyPem: string;
  installationToken: string;
}

/** Verifies a GitHub App JWT (RS256, `iss` = app id, not expired) against the app's public key. */
function appJwtValid(jwt: string, app: FakeApp): boolean {
  const [h, p, sig] = jwt.split('.');
  if (!h || !p || !sig) return false;
  const ok = createVerify('RSA-SHA256')
    .update(`${h}.${p}`)
    .verify(app.publicKeyPem, Buffer.from(sig, 'base64url'));
  const claims = JSON.parse(Buffer.from(p, 'base64url').toString('utf8')) as { iss?: unknown; exp?: unknown };
  return ok && claims.iss === app.appId && typeof claims.exp === 'number' && claims.exp > Date.now() / 1000;
}

export async function startFakeGitHub(token: string, apps: FakeApp[] = []): Promise<FakeGitHub> {
  const state: { pulls: FakePull[]; refused: number; minted: number } = { pulls: [], refused: 0, minted: 0 };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const send = (status: number, body: unknown): void => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(body));
      };
      const install = /^\/app\/installations\/([0-9]+)\/access_tokens$/.exec(req.url ?? '');
      if (install && req.method === 'POST') {
        const app = apps.find((a) => a.installationId === Number(install[1]));
        const jwt = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '';
        if (!app || !appJwtValid(jwt, app)) {
          state.refused += 1;
          send(401, { message: 'A JSON web token could not be decoded' });
          return;
        }
        state.minted += 1;
        send(201, {
          token: app.installationToken,
          expires_at: new Date(Date.now() + 3600_000).toISOString(),
        });
        return;
      }
      if (req.headers.authorization !== `Bearer ${token}`) {
        state.refused += 1;
        send(401, { message: 'Bad credentials' });
        return;
      }
      const url = new URL(req.url ?? '/', 'http://127.0.0.1');
      const m = /^\/repos\/([^/]+)\/([^/]+)\/pulls$/.exec(url.pathname);
      if (!m) {
        send(404, { message: 'Not Found' });
        return;
      }
      const [, owner = '', repo = ''] = m;
      if (req.method === 'GET') {
        const head = url.searchParams.get('head') ?? '';
        send(
          200,
          state.pulls.filter((p) => p.owner === owner && p.repo === repo && `${owner}:${p.head}` === head),
        );
        return;
      }
      if (req.method !== 'POST') {
        send(405, { message: 'Method Not Allowed' });
        return;
      }
      let body: { title?: unknown; head?: unknown; base?: unknown; body?: unknown };
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as typeof body;
      } catch {
        send(400, { message: 'Problems parsing JSON' });
        return;
      }
      if (typeof body.title !== 'string' || typeof body.head !== 'string' || typeof body.base !== 'string') {
        send(422, { message: 'Validation Failed', errors: [{ code: 'missing_field' }] });
        return;
      }
      if (state.pulls.some((p) => p.owner === owner && p.repo === repo && p.head === body.head)) {
        send(422, {
          message: 'Validation Failed',
          errors: [{ message: `A pull request already exists for ${owner}:${String(body.head)}.` }],
        });
        return;
      }
      const number = state.pulls.length + 1;
      const pull: FakePull = {
        owner,
        repo,
        number,
        title: body.title,
        head: body.head,
        base: body.base,
        body: typeof body.body === 'string' ? body.body : '',
        html_url: `https://github.example/${owner}/${repo}/pull/${number}`,
      };
      state.pulls.push(pull);
      send(201, { number, html_url: pull.html_url, state: 'open' });
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    get pulls() {
      return state.pulls;
    },
    get refused() {
      return state.refused;
    },
    get minted() {
      return state.minted;
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
