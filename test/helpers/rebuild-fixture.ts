/**
 * A small rebuild target for integration tests: a git repository with a node HTTP server that
 * answers /healthz with the commit it was built from, Dockerfiles for api, worker and sandbox under
 * infra/ (FROM the locally built sandbox image), and branches for the failure cases. Every image
 * and container it leads to carries `choiros.test=<id>` and is removed by `cleanupDocker`.
 */
import { writeFile, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type Docker from 'dockerode';
import {
  isTerminalRebuildStage,
  rebuildTargetSchema,
  type RebuildStage,
  type RebuildTarget,
  type RebuildTargetInput,
  type RebuildView,
} from '../../contracts';
import { env, git, makeGitRepo, poll, type TestApi } from './integration';
import { freePort } from '../../infra/stack/process';

const SERVER = (
  healthy: boolean,
) => `// Fixture service: answers /healthz with the version (commit) it was built from.
const http = require('node:http');
const version = process.env.VERSION || 'unknown';
const role = process.env.ROLE || 'service';
const healthy = ${healthy};
http
  .createServer((req, res) => {
    if (req.url === '/healthz') {
      res.writeHead(healthy ? 200 : 500, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ status: healthy ? 'ok' : 'broken', role, version }));
      return;
    }
    res.writeHead(404);
    res.end();
  })
  .listen(Number(process.env.PORT || 8080), '0.0.0.0');
`;

const SERVICE_DOCKERFILE = (role: string) => `ARG BASE_IMAGE=choiros-sandbox:local
FROM \${BASE_IMAGE}
ARG SLOW=0
RUN ["/bin/sh", "-c", "sleep \${SLOW}"]
COPY server.js /app/server.js
ARG VERSION=dev
ENV VERSION=\${VERSION} ROLE=${role} PORT=8080
EXPOSE 8080
CMD ["node", "/app/server.js"]
`;

const SANDBOX_DOCKERFILE = `ARG BASE_IMAGE=choiros-sandbox:local
FROM \${BASE_IMAGE}
ARG VERSION=dev
RUN ["/bin/sh", "-c", "echo \${VERSION} > /tmp/choiros-sandbox-version"]
# Builds have no network (a target's buildNetwork defaults to none): only loopback may exist here.
RUN ["/bin/sh", "-c", "test $(ls /sys/class/net | grep -v '^lo$' | wc -l) -eq 0"]
`;

export interface RebuildFixture {
  repo: string;
  /** Commits: main (healthy v1), v2 (healthy), broken (a suite fails), unhealthy (health answers 500). */
  commits: { main: string; v2: string; broken: string; unhealthy: string };
  target: RebuildTarget;
  ports: { api: number; worker: number };
}

export async function makeRebuildFixture(
  id: string,
  name: string,
  overrides: Partial<RebuildTargetInput> = {},
  buildArgs: Record<string, string> = {},
  /** The worker service starts beside the old one, without a port (how a worker replaces itself). */
  opts: { workerStartFirst?: boolean } = {},
): Promise<RebuildFixture> {
  const { path: repo } = await makeGitRepo({
    'README.md': 'fixture target\n',
    'server.js': SERVER(true),
    '.dockerignore': '.git\n*.md\ndocs/\n',
  });
  await mkdir(join(repo, 'infra'), { recursive: true });
  await mkdir(join(repo, 'docs'), { recursive: true });
  await writeFile(join(repo, 'infra/Dockerfile.api'), SERVICE_DOCKERFILE('api'));
  await writeFile(join(repo, 'infra/Dockerfile.worker'), SERVICE_DOCKERFILE('worker'));
  await writeFile(join(repo, 'infra/Dockerfile.sandbox'), SANDBOX_DOCKERFILE);
  await writeFile(join(repo, 'docs/big.txt'), 'x'.repeat(1024 * 1024)); // excluded by .dockerignore
  const g = (...args: string[]): string =>
    git(repo, '-c', 'user.name=Test', '-c', 'user.email=test@example.invalid', ...args);
  g('add', '.');
  g('commit', '-qm', 'fixture services');
  const main = g('rev-parse', 'HEAD');
  g('checkout', '-qb', 'v2');
  await writeFile(join(repo, 'CHANGELOG.txt'), 'v2\n');
  g('add', '.');
  g('commit', '-qm', 'v2');
  const v2 = g('rev-parse', 'HEAD');
  g('checkout', '-qb', 'broken', 'main');
  await writeFile(join(repo, 'FAIL_VERIFY'), 'the unit suite fails on this commit\n');
  g('add', '.');
  g('commit', '-qm', 'broken');
  const broken = g('rev-parse', 'HEAD');
  g('checkout', '-qb', 'unhealthy', 'main');
  await writeFile(join(repo, 'server.js'), SERVER(false));
  g('add', '.');
  g('commit', '-qm', 'unhealthy');
  const unhealthy = g('rev-parse', 'HEAD');
  g('checkout', '-q', 'main');
  await rm(join(repo, 'FAIL_VERIFY'), { force: true });

  const ports = { api: await freePort(), worker: await freePort() };
  const base = env.sandboxImage();
  const args = { BASE_IMAGE: base, VERSION: '{{commit}}', ...buildArgs };
  const prefix = `choiros-${name}`;
  const target = rebuildTargetSchema.parse({
    name,
    repo,
    // The fixture's branches; anything else (a run branch, feature/*) is refused with ref_not_allowed.
    refs: ['main', 'v2', 'broken', 'unhealthy'],
    suites: [
      { name: 'unit', argv: ['sh', '-c', 'test -f server.js && test ! -f FAIL_VERIFY'], timeoutSeconds: 60 },
      { name: 'lint', argv: ['sh', '-c', 'grep -q healthz server.js'], timeoutSeconds: 60 },
    ],
    images: [
      { name: 'api', image: `${prefix}-api`, dockerfile: 'infra/Dockerfile.api', buildArgs: args },
      { name: 'worker', image: `${prefix}-worker`, dockerfile: 'infra/Dockerfile.worker', buildArgs: args },
      {
        name: 'sandbox',
        image: `${prefix}-sandbox`,
        dockerfile: 'infra/Dockerfile.sandbox',
        buildArgs: args,
      },
    ],
    deployer: 'docker',
    services: [
      {
        name: 'api',
        image: 'api',
        container: `${prefix}-api`,
        containerPort: 8080,
        hostPort: ports.api,
        env: { CHOIROS_SANDBOX_IMAGE: '{{image:sandbox}}' },
        health: { path: '/healthz', expectVersion: true, timeoutSeconds: 8 },
      },
      opts.workerStartFirst
        ? {
            name: 'worker',
            image: 'worker',
            container: `${prefix}-worker`,
            strategy: 'start-first',
            health: { stableSeconds: 3 },
          }
        : {
            name: 'worker',
            image: 'worker',
            container: `${prefix}-worker`,
            containerPort: 8080,
            hostPort: ports.worker,
            health: { path: '/healthz', expectVersion: true, timeoutSeconds: 8 },
          },
    ],
    labels: { 'choiros.test': id },
    ...overrides,
  });
  return { repo, commits: { main, v2, broken, unhealthy }, target, ports };
}

/** Removes every container and image labelled `choiros.test=<id>` (nothing else). */
export async function cleanupDocker(docker: Docker, id: string): Promise<void> {
  const filters = { label: [`choiros.test=${id}`] };
  for (const c of await docker.listContainers({ all: true, filters })) {
    await docker
      .getContainer(c.Id)
      .remove({ force: true })
      .catch(() => undefined);
  }
  for (const img of await docker.listImages({ all: true, filters })) {
    for (const tag of img.RepoTags ?? []) {
      if (tag !== '<none>:<none>')
        await docker
          .getImage(tag)
          .remove({ force: true })
          .catch(() => undefined);
    }
    await docker
      .getImage(img.Id)
      .remove({ force: true })
      .catch(() => undefined);
  }
}

/** GET /healthz on a loopback port; undefined when nothing answers. */
export async function health(port: number): Promise<{ status: number; version?: string } | undefined> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(2000) });
    const body = (await res.json().catch(() => ({}))) as { version?: string };
    return { status: res.status, ...(body.version ? { version: body.version } : {}) };
  } catch {
    return undefined;
  }
}

/** A rebuild view, or a problem body (code, detail). */
type ApiBody = RebuildView & { code?: string; detail?: string };

/**
 * Release managers' view of the rebuild API: `rm-alice` (both rebuild scopes) requests and reads;
 * decisions come from a second release manager, `rm-bob` (four eyes: the requester never approves).
 */
export function rebuildApi(api: TestApi) {
  const token = (): Promise<string> =>
    api.token({ sub: 'rm-alice', tenant: 'acme', scope: 'rebuild:write rebuild:approve' });
  const approverToken = (): Promise<string> =>
    api.token({ sub: 'rm-bob', tenant: 'acme', scope: 'rebuild:write rebuild:approve' });
  const call = async (
    method: string,
    path: string,
    body?: unknown,
    as: () => Promise<string> = token,
  ): Promise<{ status: number; body: ApiBody }> => {
    const res = await fetch(`${api.url}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${await as()}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: (text ? JSON.parse(text) : {}) as ApiBody };
  };
  return {
    token,
    approverToken,
    start: (body: Record<string, unknown>) => call('POST', '/v1/rebuilds', body),
    get: (id: string) => call('GET', `/v1/rebuilds/${id}`),
    /** A decision by the second release manager. */
    decide: (id: string, decision: 'approve' | 'reject', reason?: string) =>
      call('POST', `/v1/rebuilds/${id}/${decision}`, reason ? { reason } : undefined, approverToken),
    /** A decision by another release manager of acme, `sub`. */
    decideAs: (id: string, decision: 'approve' | 'reject', sub: string) =>
      call('POST', `/v1/rebuilds/${id}/${decision}`, undefined, () =>
        api.token({ sub, tenant: 'acme', scope: 'rebuild:write rebuild:approve' }),
      ),
    /** A decision by the requester (rm-alice). */
    decideAsRequester: (id: string, decision: 'approve' | 'reject') =>
      call('POST', `/v1/rebuilds/${id}/${decision}`, undefined, token),
    /** Polls until the rebuild reaches one of `stages` (and, when terminal, its events are all published). */
    async waitStage(id: string, stages: RebuildStage[], timeoutMs = 180_000): Promise<RebuildView> {
      const r = await poll(
        () => call('GET', `/v1/rebuilds/${id}`),
        (r) =>
          r.status === 200 &&
          stages.includes(r.body.stage) &&
          (!isTerminalRebuildStage(r.body.stage) || r.body.events.published === r.body.events.emitted),
        timeoutMs,
      );
      return r.body;
    },
  };
}
