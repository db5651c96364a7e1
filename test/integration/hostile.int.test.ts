/**
 * Hostile commands against the real Docker engine, through the real sandbox activities (real git
 * worktree, real containers, real artifact store). Each test fails if its protection is removed:
 * pids limit, memory limit + OOM reporting, read-only root fs, no host mounts, network-less
 * verifier lane, secrets only in the execution lane, verifier timeouts.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { MockActivityEnvironment } from '@temporalio/testing';
import Docker from 'dockerode';
import pino from 'pino';
import { VerifierCatalog, type CommandOutcome, type VerifierSpec } from '../../contracts';
import { LocalArtifactStore } from '../../activities/artifacts/local-store';
import { createSandboxActivities, workspacesFor } from '../../activities/sandbox/activities';
import { SandboxPool } from '../../activities/sandbox/pool';
import { DockerSandboxDriver, LABELS } from '../../activities/sandbox/docker-driver';
import type { SandboxActivities } from '../../activities/types';
import { env, makeGitRepo, poll } from '../helpers/integration';

const docker = new Docker();
const suffix = randomBytes(4).toString('hex');
const runId = `it-hostile-${suffix}`;
const owner = { tenant: 'acme', userId: 'mallory', workItemId: `wi-${suffix}` };
const SECRET_VALUE = `s3cr3t-${randomBytes(12).toString('hex')}`;
const ACME_SECRET = `acme-${randomBytes(12).toString('hex')}`;
const GLOBEX_SECRET = `globex-${randomBytes(12).toString('hex')}`;
const HOST_MARKER = `host-only-${randomBytes(12).toString('hex')}`;
const PIDS_LIMIT = 48;

let acts: SandboxActivities;
let pool: SandboxPool | undefined;
let dataDir: string;
let repo: string;
let network: Docker.Network;
let server: Server;
let gateway: string;
let port = 0;
const connections: string[] = [];
const sockets = new Set<Socket>();
const logLines: string[] = [];
const createHeartbeats: unknown[] = [];

const spec = (id: string, argv: string[], timeoutSeconds = 30): VerifierSpec => ({
  id,
  description: id,
  argv,
  timeoutSeconds,
  scopes: [],
  moods: [],
  artifacts: [],
});

function run<A extends unknown[], R>(fn: (...a: A) => Promise<R>, ...args: A): Promise<R> {
  return new MockActivityEnvironment().run(fn, ...args);
}

const exec = (argv: string[], timeoutSeconds = 30): Promise<CommandOutcome> =>
  run((i) => acts.execInSandbox(i), { sandboxId: runId, argv, timeoutSeconds });
const verify = (verifierId: string) =>
  run((i) => acts.runVerifier(i), { sandboxId: runId, verifierId, owner });

beforeAll(async () => {
  dataDir = await mkdtemp(join(env.workDir(), 'data-hostile-'));
  await writeFile(join(dataDir, 'host-secret.txt'), HOST_MARKER);
  repo = (await makeGitRepo({ 'README.md': 'hello\n' })).path;

  // A network the test creates, with a TCP listener on its host-side gateway: the only address
  // the verifier lane could try to reach here.
  network = await docker.createNetwork({
    Name: `choiros-it-net-${suffix}`,
    Driver: 'bridge',
    Labels: { [LABELS.managed]: 'true', [LABELS.runId]: runId },
  });
  const info = (await network.inspect()) as { IPAM: { Config: { Gateway?: string }[] } };
  gateway = info.IPAM.Config[0]?.Gateway ?? '';
  server = createServer((sock) => {
    connections.push(String(sock.remoteAddress));
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.end('hello\n');
  });
  await new Promise<void>((r) => server.listen(0, gateway, () => r()));
  port = (server.address() as { port: number }).port;

  const driver = new DockerSandboxDriver(docker, {
    image: env.sandboxImage(),
    user: '10001:10001',
    memoryBytes: 64 * 1024 * 1024,
    nanoCpus: 1e9,
    pidsLimit: PIDS_LIMIT,
    tmpfsSizeMb: 16,
    executionEnv: { CHOIROS_IT_SECRET: SECRET_VALUE },
  });
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      logLines.push(chunk.toString());
      cb();
    },
  });
  const tenantSecrets = { acme: { ACME_TOKEN: ACME_SECRET }, globex: { GLOBEX_TOKEN: GLOBEX_SECRET } };
  // The cases run in lanes from a warm pool (decision 0016) — a lane per tenant (their secrets)
  // besides the shared one — so `npm test` proves the pool's lanes are as hardened as cold ones
  // (hostile-workspace, sandboxes and the rest use cold lanes). CHOIROS_TEST_SANDBOX_POOL_SIZE=0: cold.
  const poolSize = Number(process.env.CHOIROS_TEST_SANDBOX_POOL_SIZE ?? 2);
  if (poolSize > 0) {
    pool = new SandboxPool({
      driver,
      workspaces: workspacesFor({
        worktreeRoot: join(dataDir, 'worktrees'),
        mirrorRoot: join(dataDir, 'mirrors'),
        sandboxUser: '10001:10001',
        logger: pino({ level: 'silent' }),
      }),
      root: join(dataDir, 'worktrees'),
      settings: { size: poolSize, lanes: { acme: poolSize, globex: poolSize }, refillConcurrency: 2 },
      laneEnv: (tenant) => tenantSecrets[tenant as keyof typeof tenantSecrets] ?? {},
      logger: pino({ level: 'silent' }),
    });
    await pool.start();
    const ready = pool;
    await poll(
      async () => ready.idleIn('acme'),
      (n) => n === poolSize,
      60_000,
    );
  }
  acts = createSandboxActivities({
    ...(pool ? { pool } : {}),
    driver,
    verifiers: new VerifierCatalog([
      spec('V-HOG', ['tail', '/dev/zero']),
      spec('V-SLEEP', ['sleep', '120'], 2),
      spec('V-ENV', ['sh', '-c', 'env; tr "\\0" "\\n" < /proc/1/environ; cat /proc/self/environ']),
      spec('V-NET', [
        'sh',
        '-c',
        `echo ping | nc -w 3 ${gateway} ${port}; wget -T 3 -q -O- http://${gateway}:${port}/`,
      ]),
      spec('V-HOST', [
        'sh',
        '-c',
        `cat ${dataDir}/host-secret.txt /workspace/../host-secret.txt ${repo}/.git/HEAD /etc/shadow`,
      ]),
    ]),
    worktreeRoot: join(dataDir, 'worktrees'),
    mirrorRoot: join(dataDir, 'mirrors'),
    hostId: 'it-hostile',
    hostQueue: 'choiros-sandbox-it-hostile',
    image: env.sandboxImage(),
    sandboxUser: '10001:10001',
    artifacts: new LocalArtifactStore(join(dataDir, 'artifacts')),
    maxLogBytes: 1024 * 1024,
    tenantSecrets,
    logger: pino({ level: 'debug' }, sink),
  });
  const creating = new MockActivityEnvironment();
  creating.on('heartbeat', (d: unknown) => createHeartbeats.push(d));
  await creating.run((i) => acts.createSandbox(i), { runId, ...owner, repo, baseRef: 'main' });
  // With the pool on, the cases below run in acme's pooled lane.
  if (pool) {
    const info = await docker.getContainer(`choiros-run-${runId}`).inspect();
    expect(info.Config.Labels[LABELS.pool]).toBe(pool.id);
  }
});

test('when a sandbox is created, then createSandbox heartbeats each phase (a lost worker is noticed within its heartbeat timeout)', () => {
  expect(createHeartbeats).toEqual(
    ['start', 'image', 'repository', 'worktree', 'container'].map((phase) => ({ phase })),
  );
});

afterAll(async () => {
  if (acts) await run((i) => acts.destroySandbox(i), { sandboxId: runId, repo, keepBranch: false });
  await pool?.stop();
  // A peer whose container is gone never sends FIN; close() would wait for it forever.
  for (const sock of sockets) sock.destroy();
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  await network?.remove().catch(() => undefined);
  const left = await docker.listContainers({ all: true, filters: { label: [`${LABELS.runId}=${runId}`] } });
  expect(left).toEqual([]);
});

test('when the work item uses node and git, then both run under the lock-down', async () => {
  const out = await exec([
    'sh',
    '-c',
    'node -e "console.log(6*7)" && git --version && cd /tmp && git init -q r && cd r && echo x > f && git add f && git -c user.name=a -c user.email=a@example.invalid commit -qm m && git rev-list --count HEAD',
  ]);
  expect(out.exitCode).toBe(0);
  expect(out.outputTail).toMatch(/^42\ngit version \S+\n1\n$/);
});

test('when a command allocates beyond the memory limit, then it is OOM-killed and reported as failed', async () => {
  const execHog = await exec(['tail', '/dev/zero']);
  expect(execHog).toMatchObject({ exitCode: 137, timedOut: false, oomKilled: true });

  const verifierHog = await verify('V-HOG');
  expect(verifierHog).toMatchObject({ result: 'fail', oomKilled: true, timedOut: false });
  expect(verifierHog.reportDigest).toMatch(/^[0-9a-f]{64}$/);
});

test('when a command writes outside /workspace, then the read-only root fs refuses it', async () => {
  const out = await exec([
    'sh',
    '-c',
    'for d in / /etc /bin /opt/choiros /usr /var; do (echo x > $d/pwned) 2>/dev/null && echo WROTE:$d; done; grep -E "^[^ ]+ / " /proc/mounts; echo ok > /workspace/inside.txt && echo INSIDE-OK',
  ]);
  expect(out.outputTail).not.toMatch(/WROTE:/);
  expect(out.outputTail).toMatch(/ \/ \S+ ro[, ]/);
  expect(out.outputTail).toContain('INSIDE-OK');
});

test('when a command reads host files, then neither lane sees the worker data dir, the repo or /etc/shadow', async () => {
  const hostShadowHead = execFileSync('head', ['-c', '5', '/etc/shadow'], { encoding: 'utf8' });
  const execOut = await exec([
    'sh',
    '-c',
    `cat ${dataDir}/host-secret.txt /workspace/../host-secret.txt ${repo}/.git/HEAD /etc/shadow /proc/1/root/etc/shadow 2>&1; true`,
  ]);
  const verifierOut = await verify('V-HOST');
  for (const text of [execOut.outputTail, verifierOut.outputTail]) {
    expect(text).not.toContain(HOST_MARKER);
    expect(text).not.toContain('ref: refs/heads');
    expect(text).not.toContain(hostShadowHead);
  }
  expect(verifierOut.result).toBe('fail');
});

test('when the verifier lane tries the network, then nothing arrives, while a container on that network gets through', async () => {
  const control = await docker.createContainer({
    name: `choiros-it-netcontrol-${suffix}`,
    Image: env.sandboxImage(),
    Cmd: ['sh', '-c', `echo ping | nc -w 3 ${gateway} ${port}`],
    Labels: { [LABELS.managed]: 'true', [LABELS.runId]: runId },
    HostConfig: { NetworkMode: `choiros-it-net-${suffix}`, AutoRemove: false },
  });
  try {
    await control.start();
    await control.wait();
  } finally {
    await control.remove({ force: true });
  }
  expect(connections.length).toBe(1); // the path exists: the check below is meaningful

  const v = await verify('V-NET');
  expect(v.result).toBe('fail');
  expect(connections.length).toBe(1);
});

test('when a secret is configured, then the execution lane has it and the verifier lane and logs do not', async () => {
  const inExec = await exec(['sh', '-c', 'echo "secret=$CHOIROS_IT_SECRET"']);
  expect(inExec.outputTail).toContain(`secret=${SECRET_VALUE}`);
  const inVerifier = await verify('V-ENV');
  expect(inVerifier.result).toBe('pass');
  expect(inVerifier.outputTail).toContain('PATH=');
  expect(inVerifier.outputTail).not.toContain(SECRET_VALUE);
  expect(logLines.join('')).not.toContain(SECRET_VALUE);
});

test("when tenants have secrets, then a run's execution lane has its own tenant's and no other's, and its verifier lane none", async () => {
  const inAcme = await exec(['sh', '-c', 'echo "acme=$ACME_TOKEN globex=$GLOBEX_TOKEN"']);
  expect(inAcme.outputTail.trim()).toBe(`acme=${ACME_SECRET} globex=`);
  const globexRun = `it-globex-${suffix}`;
  const globexOwner = { tenant: 'globex', userId: 'mallory', workItemId: `wi-g-${suffix}` };
  try {
    await run((i) => acts.createSandbox(i), { runId: globexRun, ...globexOwner, repo, baseRef: 'main' });
    const inGlobex = await run((i) => acts.execInSandbox(i), {
      sandboxId: globexRun,
      argv: ['sh', '-c', 'echo "acme=$ACME_TOKEN globex=$GLOBEX_TOKEN"; cat /proc/1/environ'],
      timeoutSeconds: 30,
    });
    expect(inGlobex.outputTail).toContain(`acme= globex=${GLOBEX_SECRET}`);
    expect(inGlobex.outputTail).not.toContain(ACME_SECRET);
  } finally {
    await run((i) => acts.destroySandbox(i), { sandboxId: globexRun, repo, keepBranch: false });
  }
  const inVerifier = await verify('V-ENV');
  expect(inVerifier.outputTail).not.toContain(ACME_SECRET);
  expect(inVerifier.outputTail).not.toContain(GLOBEX_SECRET);
  expect(logLines.join('')).not.toContain(ACME_SECRET);
});

test('when a verifier outlives its timeout, then it is killed, reported timeout, and its container is gone', async () => {
  const v = await verify('V-SLEEP');
  expect(v).toMatchObject({ result: 'timeout', timedOut: true, exitCode: 124 });
  await expect(docker.getContainer(`choiros-verify-${runId}-V-SLEEP`).inspect()).rejects.toMatchObject({
    statusCode: 404,
  });
});

test('when a fork bomb runs, then it hits the pids limit, nothing of it outlives the command, and the sandbox and this worker keep working', async () => {
  const bomb = await exec(
    ['sh', '-c', 'i=0; while [ $i -lt 1000 ]; do sleep 300 & i=$((i+1)); done; echo spawned-all'],
    60,
  );
  expect(bomb.outputTail).toMatch(/can't fork|Resource temporarily unavailable/);
  // The execution lane is stopped once its command is done: the 300 s sleeps are gone with it.
  expect((await docker.getContainer(`choiros-run-${runId}`).inspect()).State.Running).toBe(false);
  // The worker process itself can still fork, and a fresh verifier container still runs.
  expect(execFileSync('true', { encoding: 'utf8' })).toBe('');
  const hog = await verify('V-ENV');
  expect(hog.exitCode).toBe(0);
  // The next command gets the lane back, with only its own processes in it.
  const next = await exec(['sh', '-c', 'ps -o pid= | wc -l']);
  expect(next.exitCode).toBe(0);
  expect(Number(next.outputTail.trim())).toBeLessThan(6);
});

describe('network policy internal', () => {
  const netRun = `it-internal-${suffix}`;
  afterAll(async () => {
    await run((i) => acts.destroySandbox(i), { sandboxId: netRun, repo, keepBranch: false });
    await expect(docker.getNetwork(`choiros-net-${netRun}`).inspect()).rejects.toMatchObject({
      statusCode: 404,
    });
  });

  test('when the run asks for internal, then its execution lane reaches its own network and nothing outside it', async () => {
    await run((i) => acts.createSandbox(i), {
      runId: netRun,
      ...owner,
      repo,
      baseRef: 'main',
      network: 'internal' as const,
    });
    const net = `choiros-net-${netRun}`;
    expect(((await docker.getNetwork(net).inspect()) as { Internal: boolean }).Internal).toBe(true);

    // A peer on the run's network (what service containers of a run would be).
    const peer = await docker.createContainer({
      name: `choiros-it-peer-${suffix}`,
      Image: env.sandboxImage(),
      Cmd: ['sh', '-c', 'echo pong-from-peer | nc -l -p 7000'],
      Labels: { [LABELS.managed]: 'true', [LABELS.runId]: netRun },
      HostConfig: { NetworkMode: net },
    });
    try {
      await peer.start();
      const peerIp = (
        (await peer.inspect()) as { NetworkSettings: { Networks: Record<string, { IPAddress: string }> } }
      ).NetworkSettings.Networks[net]?.IPAddress;
      const before = connections.length;
      const out = await run((i) => acts.execInSandbox(i), {
        sandboxId: netRun,
        argv: [
          'sh',
          '-c',
          // Retried: the peer may not be listening yet when the command starts.
          `ls /sys/class/net; for i in 1 2 3 4 5 6; do r=$(nc -w 2 ${peerIp} 7000 </dev/null); [ -n "$r" ] && echo "$r" && break; sleep 1; done; echo out | nc -w 3 ${gateway} ${port} && echo OUTSIDE-OK; true`,
        ],
        timeoutSeconds: 30,
      });
      expect(out.outputTail).toContain('eth0');
      expect(out.outputTail).toContain('pong-from-peer');
      expect(out.outputTail).not.toContain('OUTSIDE-OK');
      expect(connections.length).toBe(before);
    } finally {
      await peer.remove({ force: true });
    }
  });
});
