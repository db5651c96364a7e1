/**
 * Hostile egress (issue 13, item 5), end to end on the real Docker driver, Temporal and NATS: real
 * runs whose command tries to turn the run's egress proxy inward — loopback in every notation,
 * IPv6 loopback and IPv4-mapped forms, the metadata address, `localhost` allow-listed by name, a
 * private neighbour on the egress bridge allow-listed by name, and a flood. Each is refused with
 * its reason, the base branch does not move, and a normal run right after commits exactly its
 * change. Traffic stays on loopback and on networks this test and the driver create; loops are
 * bounded in count and time.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import Docker from 'dockerode';
import { JSONCodec, type NatsConnection } from 'nats';
import { EVENT_STREAM, runEventsFilter, type EventEnvelope, type RunView } from '../../contracts';
import {
  DockerSandboxDriver,
  EGRESS_NETWORK,
  LABELS,
  egressProxyName,
} from '../../activities/sandbox/docker-driver';
import { env, git, makeGitRepo, poll, type TestApi } from '../helpers/integration';
import { startEgressStack } from '../helpers/egress';

const docker = new Docker();
const suffix = randomBytes(4).toString('hex');
/** Excepted by CHOIROS_EGRESS_ALLOW_CIDRS (its /32): the positive control of every run. */
const allowedHost = `choiros-it-hegress-a-${suffix}`;
/** On the same bridge, private and not excepted: allow-listed by name, refused by address. */
const privateHost = `choiros-it-hegress-p-${suffix}`;
/** The proxy's own port: on the proxy's loopback it is a live service to be turned inward. */
const PROXY_PORT = 3128;
let api: TestApi;
let nats: NatsConnection;

type Egress = { host: string; port: number; allowed: boolean; reason: string; address?: string | null };
type Summary = {
  total: number;
  allowed: number;
  denied: number;
  rate_limited: number;
  individual: number;
  destinations: { host: string; port: number; allowed: number; denied: number }[];
  reasons: Record<string, number>;
  complete: boolean;
};

/**
 * The work item's command: sends each spec through the proxy in http_proxy and prints
 * `<spec> => <answer>`. `GET <absolute URI>` is a proxy request; `CONNECT <host:port>` a tunnel
 * (when established, it sends one HTTP/1.0 request through it).
 */
const CLIENT = [
  "const http = require('http'); const net = require('net');",
  'const proxy = new URL(process.env.http_proxy);',
  'const hostOf = (u) => u.replace(/^[a-z]+:\\/\\//, "").split("/")[0];',
  'const get = (u) => new Promise((done) => {',
  '  const req = http.request({ host: proxy.hostname, port: proxy.port, path: u, headers: { host: hostOf(u) }, agent: false }, (r) => {',
  "    let d = ''; r.on('data', (c) => (d += c)); r.on('end', () => done(r.statusCode + ' ' + d.trim()));",
  '  });',
  "  req.setTimeout(10000, () => req.destroy(Object.assign(new Error('t'), { code: 'TIMEOUT' })));",
  "  req.on('error', (e) => done('ERR ' + e.code)); req.end();",
  '});',
  'const connect = (t) => new Promise((done) => {',
  "  let d = ''; let sent = false;",
  "  const s = net.connect(Number(proxy.port), proxy.hostname, () => s.write('CONNECT ' + t + ' HTTP/1.1\\r\\nHost: ' + t + '\\r\\n\\r\\n'));",
  "  s.on('data', (c) => { d += c; if (!sent && d.startsWith('HTTP/1.1 200')) { sent = true; s.write('GET / HTTP/1.0\\r\\nHost: ' + t + '\\r\\n\\r\\n'); } });",
  "  const end = () => done(d.replace(/\\r?\\n/g, ' | ').trim());",
  "  s.on('end', end); s.on('error', (e) => done('ERR ' + e.code + ' ' + d));",
  "  s.setTimeout(10000, () => { s.destroy(); done('TIMEOUT ' + d.replace(/\\r?\\n/g, ' | ')); });",
  '});',
  '(async () => {',
  '  for (const spec of process.argv.slice(1)) {',
  "    const [verb, what] = spec.split(' ');",
  "    console.log(spec, '=>', verb === 'CONNECT' ? await connect(what) : await get(what));",
  '  }',
  '})();',
].join('\n');

/**
 * The flood: `count` proxy requests to a name that is not allowed, as fast as one connection
 * allows, stopping after `count` or `seconds`, whichever comes first; prints the status counts.
 */
const FLOOD = [
  "const http = require('http');",
  'const proxy = new URL(process.env.http_proxy);',
  'const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });',
  'const [count, seconds, host] = [Number(process.argv[1]), Number(process.argv[2]), process.argv[3]];',
  'const one = (i) => new Promise((done) => {',
  "  const req = http.request({ host: proxy.hostname, port: proxy.port, path: 'http://' + host + '/' + i, agent }, (r) => { r.resume(); r.on('end', () => done(String(r.statusCode))); });",
  "  req.on('error', (e) => done('ERR')); req.setTimeout(5000, () => req.destroy()); req.end();",
  '});',
  '(async () => {',
  '  const started = Date.now(); const counts = {}; let sent = 0;',
  '  while (sent < count && Date.now() - started < seconds * 1000) {',
  '    const batch = await Promise.all([0, 1, 2, 3].map((k) => one(sent + k))); sent += batch.length;',
  '    for (const s of batch) counts[s] = (counts[s] || 0) + 1;',
  '  }',
  "  console.log('FLOOD sent=' + sent + ' ' + JSON.stringify(counts));",
  '  agent.destroy();',
  '})();',
].join('\n');

async function post(body: unknown): Promise<Response> {
  return fetch(`${api.url}/v1/runs`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${await api.token()}` },
    body: JSON.stringify(body),
  });
}

async function finished(runId: string): Promise<RunView> {
  const token = await api.token();
  return poll(
    async () =>
      (await (
        await fetch(`${api.url}/v1/runs/${runId}`, { headers: { authorization: `Bearer ${token}` } })
      ).json()) as RunView,
    (v) => v.finishedAt !== undefined && v.events.published === v.events.emitted,
    180_000,
  );
}

async function runEvents(runId: string): Promise<EventEnvelope[]> {
  const consumer = await nats.jetstream().consumers.get(EVENT_STREAM, {
    filterSubjects: runEventsFilter({ tenant: 'acme', userId: 'alice' }, runId),
  });
  const codec = JSONCodec<EventEnvelope>();
  const events: EventEnvelope[] = [];
  for await (const m of await consumer.fetch({ max_messages: 1000, expires: 2000 })) {
    events.push(codec.decode(m.data));
    if (m.info.pending === 0) break;
  }
  return events;
}

/** A hostile run: its command's output and its egress events, after checking the repo is untouched. */
async function hostileRun(
  egress: { host: string; port: number }[],
  execute: string[],
): Promise<{
  view: RunView;
  out: string;
  egress: Egress[];
  summary: Summary;
  events: EventEnvelope[];
  repo: string;
}> {
  const repo = await makeGitRepo();
  const res = await post({
    repo: repo.path,
    network: 'allowlist',
    egress: [{ host: allowedHost, port: 8080 }, ...egress],
    workItem: { description: 'hostile egress', execute, requiredVerifiers: ['V-README-INTACT'] },
  });
  expect(res.status).toBe(201);
  const { runId } = (await res.json()) as RunView;
  const view = await finished(runId);
  const events = await runEvents(runId);
  // The command wrote nothing: the run commits nothing (or is discarded); the base never moves.
  if (view.status === 'committed') {
    const receipt = events.find((e) => e.event_type === 'receipt.commit')?.payload as {
      changed_paths: string[];
    };
    expect(receipt.changed_paths).toEqual([]);
  } else {
    expect(view.status).toBe('discarded');
  }
  expect(git(repo.path, 'rev-parse', 'refs/heads/main')).toBe(repo.head);
  const summaries = events.filter((e) => e.event_type === 'sandbox.egress.summary');
  expect(summaries).toHaveLength(1);
  // Nothing of the run is left: not its containers (proxy included), not its network.
  expect(
    await docker.listContainers({ all: true, filters: { label: [`${LABELS.runId}=${runId}`] } }),
  ).toEqual([]);
  return {
    view,
    out: view.execution?.outputTail ?? '',
    egress: events.filter((e) => e.event_type === 'sandbox.egress').map((e) => e.payload as Egress),
    summary: summaries[0]!.payload as Summary,
    events,
    repo: repo.path,
  };
}

/** A normal run on the same repository right after: it commits exactly its change. */
async function normalRunCommits(repo: string, name: string): Promise<void> {
  const base = git(repo, 'rev-parse', 'refs/heads/main');
  const res = await post({
    repo,
    workItem: {
      description: 'normal run after a hostile one',
      execute: ['sh', '-c', `echo ok > ${name}`],
      requiredVerifiers: ['V-README-INTACT'],
    },
  });
  expect(res.status).toBe(201);
  const view = await finished(((await res.json()) as RunView).runId);
  expect(view.status).toBe('committed');
  expect(view.commit).toMatch(/^[0-9a-f]{40}$/);
  expect(git(repo, 'diff', '--name-only', base, view.commit!).split('\n')).toEqual([name]);
  expect(git(repo, 'show', `${view.commit!}:${name}`)).toBe('ok');
  expect(git(repo, 'rev-parse', 'refs/heads/main')).toBe(base);
}

/** Every refused attempt in the output, and the control that shows the proxy itself works. */
function expectControl(out: string): void {
  expect(out).toContain(`GET http://${allowedHost}:8080/ => 200 hello-from-allowed`);
}

const control = `GET http://${allowedHost}:8080/`;

let stack: Awaited<ReturnType<typeof startEgressStack>>;
beforeAll(async () => {
  stack = await startEgressStack(docker, 'it-hostile-egress', [
    { name: allowedHost, reply: 'hello-from-allowed' },
    { name: privateHost, reply: 'hello-from-private' },
  ]);
  ({ api, nats } = stack);
});

afterAll(async () => {
  await stack?.stop();
});

test('when an allow-list names an IP address in any notation, then the API answers 400', async () => {
  const base = {
    repo: '/srv/x',
    network: 'allowlist',
    workItem: { description: 'x', execute: ['true'], requiredVerifiers: ['V-README-INTACT'] },
  };
  for (const host of [
    '127.0.0.1',
    '2130706433',
    '0x7f000001',
    '0177.0.0.1',
    '127.1',
    '[::1]',
    '::1',
    '[::ffff:127.0.0.1]',
    '169.254.169.254',
    '0x7f.1',
  ]) {
    const res = await post({ ...base, egress: [{ host, port: 80 }] });
    expect({ host, status: res.status }).toEqual({ host, status: 400 });
  }
});

// The IP-literal cases: the allow-list holds names only (the API refuses the rest), so the forms
// are sent in the request line and in CONNECT, at the proxy's own live port.
const literalCases: [string, string[]][] = [
  ['loopback 127.0.0.1', [`GET http://127.0.0.1:${PROXY_PORT}/`, `CONNECT 127.0.0.1:${PROXY_PORT}`]],
  [
    'loopback as 2130706433, 0x7f000001, 0177.0.0.1 and 127.1',
    ['2130706433', '0x7f000001', '0177.0.0.1', '127.1'].flatMap((h) => [
      `GET http://${h}:${PROXY_PORT}/`,
      `CONNECT ${h}:${PROXY_PORT}`,
    ]),
  ],
  [
    'IPv6 loopback [::1] and IPv4-mapped [::ffff:127.0.0.1]',
    ['[::1]', '[::ffff:127.0.0.1]'].flatMap((h) => [
      `GET http://${h}:${PROXY_PORT}/`,
      `CONNECT ${h}:${PROXY_PORT}`,
    ]),
  ],
  [
    'the metadata address 169.254.169.254',
    ['GET http://169.254.169.254/latest/meta-data/', 'CONNECT 169.254.169.254:80'],
  ],
];

test.each(literalCases)(
  'when a run aims at %s through the proxy, then each attempt is refused as an ip literal',
  async (name, specs) => {
    const r = await hostileRun([], ['node', '-e', CLIENT, control, ...specs]);
    expectControl(r.out);
    for (const spec of specs) {
      const line = r.out.split('\n').find((l) => l.startsWith(`${spec} =>`));
      expect({ spec, line }).toEqual({
        spec,
        line: expect.stringMatching(/=> (403|HTTP\/1\.1 403 Forbidden) .*denied \(ip literal\)/),
      });
    }
    const refused = r.egress.filter((e) => !e.allowed);
    expect(refused).toHaveLength(specs.length);
    expect(refused.every((e) => e.reason === 'ip literal')).toBe(true);
    expect(r.summary).toMatchObject({
      total: specs.length + 1,
      allowed: 1,
      denied: specs.length,
      complete: true,
    });
    await normalRunCommits(r.repo, `after-${name.replace(/[^a-z0-9]+/gi, '-')}.txt`);
  },
);

test('when a run allow-lists `localhost` by name, then the proxy resolves it and refuses it as a loopback address', async () => {
  const specs = [`GET http://localhost:${PROXY_PORT}/`, `CONNECT localhost:${PROXY_PORT}`];
  const r = await hostileRun(
    [{ host: 'localhost', port: PROXY_PORT }],
    ['node', '-e', CLIENT, control, ...specs],
  );
  expectControl(r.out);
  expect(r.out).toContain(
    `GET http://localhost:${PROXY_PORT}/ => 403 egress to localhost:${PROXY_PORT} denied (address loopback)`,
  );
  expect(r.out).toMatch(
    new RegExp(`CONNECT localhost:${PROXY_PORT} => HTTP/1.1 403 Forbidden .*denied \\(address loopback\\)`),
  );
  expect(r.egress.filter((e) => e.host === 'localhost')).toEqual([
    expect.objectContaining({
      allowed: false,
      reason: 'address loopback',
      address: expect.stringMatching(/^(127\.|::1$)/),
    }),
    expect.objectContaining({ allowed: false, reason: 'address loopback' }),
  ]);
  await normalRunCommits(r.repo, 'after-localhost.txt');
});

test('when a run allow-lists a private neighbour on the egress bridge by name, then it is refused by address', async () => {
  const privateIp = await stack.egress.ipOf(stack.egress.targets[1]!);
  const specs = [`GET http://${privateHost}:8080/`, `CONNECT ${privateHost}:8080`];
  const r = await hostileRun([{ host: privateHost, port: 8080 }], ['node', '-e', CLIENT, control, ...specs]);
  expectControl(r.out);
  expect(r.out).not.toContain('hello-from-private');
  expect(r.out).toContain(
    `GET http://${privateHost}:8080/ => 403 egress to ${privateHost}:8080 denied (address private)`,
  );
  expect(r.egress.filter((e) => e.host === privateHost)).toEqual([
    expect.objectContaining({ allowed: false, reason: 'address private', address: privateIp }),
    expect.objectContaining({ allowed: false, reason: 'address private', address: privateIp }),
  ]);
  await normalRunCommits(r.repo, 'after-private-neighbour.txt');
});

test('when a run floods the proxy with 2000 attempts, then they are rate-limited and leave a bounded number of events', async () => {
  const r = await hostileRun([], ['node', '-e', FLOOD, '2000', '90', `flood-${suffix}.invalid`]);
  const m = /FLOOD sent=(\d+) (\{.*\})/.exec(r.out);
  expect(m).not.toBeNull();
  const sent = Number(m![1]);
  const statuses = JSON.parse(m![2]!) as Record<string, number>;
  expect(sent).toBe(2000);
  expect(statuses['429']).toBeGreaterThan(0);
  expect(statuses['403']).toBeGreaterThan(0);
  // Counted, every one of them; reported one by one, at most 20.
  expect(r.summary).toMatchObject({ total: 2000, allowed: 0, denied: 2000, individual: 20, complete: true });
  expect(r.summary.rate_limited).toBe(statuses['429']);
  expect(r.summary.reasons['rate_limited']).toBe(statuses['429']);
  expect(r.summary.destinations.length).toBeLessThanOrEqual(32);
  expect(r.egress).toHaveLength(20);
  expect(r.view.execution?.egress).toHaveLength(20);
  expect(r.events.length).toBeLessThan(60);
  // The workflow's history stays small too: the flood is one activity result of bounded size.
  const history = await api.client.workflow.getHandle(r.view.runId).fetchHistory();
  expect(history.events?.length ?? 0).toBeLessThan(200);
  expect(Buffer.byteLength(JSON.stringify(history))).toBeLessThan(512 * 1024);
  await normalRunCommits(r.repo, 'after-flood.txt');
});

/** Runs argv in a running container (as its user) and returns its stdout. */
async function execIn(container: string, argv: string[]): Promise<string> {
  const exec = await docker
    .getContainer(container)
    .exec({ Cmd: argv, AttachStdout: true, AttachStderr: true });
  const stream = await exec.start({ hijack: true, stdin: false });
  const out = new PassThrough();
  let text = '';
  out.on('data', (c: Buffer) => (text += c.toString()));
  docker.modem.demuxStream(stream, out, out);
  await new Promise((r) => stream.on('end', r));
  return text;
}

test('when the allowed CIDRs cover the whole egress bridge, then its gateway (the Docker host) and the denied CIDRs are still refused', async () => {
  const bridge = (await docker.getNetwork(EGRESS_NETWORK).inspect()) as {
    IPAM: { Config: { Subnet?: string; Gateway?: string }[] };
  };
  const subnet = bridge.IPAM.Config[0]?.Subnet ?? '';
  const gateway = bridge.IPAM.Config[0]?.Gateway ?? '';
  expect(gateway).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
  const [allowedIp, privateIp] = [
    await stack.egress.ipOf(stack.egress.targets[0]!),
    await stack.egress.ipOf(stack.egress.targets[1]!),
  ];
  // A driver as a platform might misconfigure it: the whole bridge excepted, one address denied.
  const driver = new DockerSandboxDriver(docker, {
    image: env.sandboxImage(),
    user: '10001:10001',
    memoryBytes: 128 * 1024 * 1024,
    nanoCpus: 1e9,
    pidsLimit: 64,
    tmpfsSizeMb: 16,
    egress: { allowCidrs: [subnet], denyCidrs: [`${privateIp}/32`] },
  });
  const runId = `it-hegress-gw-${suffix}`;
  const name = `choiros-${runId}`;
  const labels = {
    tenant: 'acme',
    userId: 'mallory',
    runId,
    workItemId: `wi-${suffix}`,
    lane: 'execution' as const,
  };
  try {
    await driver.createExecutionSandbox({
      name,
      workspace: await mkdtemp(join(env.workDir(), 'ws-gw-')),
      labels,
      network: 'allowlist',
      egress: [
        { host: allowedHost, port: 8080 },
        { host: privateHost, port: 8080 },
      ],
    });
    const out = await driver.exec(
      name,
      ['node', '-e', CLIENT, `GET http://${allowedHost}:8080/`, `GET http://${privateHost}:8080/`],
      { timeoutMs: 60_000 },
    );
    expect(out.outputTail).toContain(`GET http://${allowedHost}:8080/ => 200 hello-from-allowed`);
    expect(out.outputTail).toContain(
      `GET http://${privateHost}:8080/ => 403 egress to ${privateHost}:8080 denied (address denied range)`,
    );
    expect(out.egress).toEqual([
      expect.objectContaining({ host: allowedHost, allowed: true, address: allowedIp }),
      expect.objectContaining({
        host: privateHost,
        allowed: false,
        reason: 'address denied range',
        address: privateIp,
      }),
    ]);
    expect(out.egressSummary).toMatchObject({ total: 2, allowed: 1, denied: 1, complete: true });
    // The proxy listens on the run's network only: from the egress bridge (here, the host through
    // the bridge gateway) its port is closed.
    const proxyInfo = (await docker.getContainer(egressProxyName(name)).inspect()) as {
      NetworkSettings: { Networks: Record<string, { IPAddress: string }> };
    };
    const proxyBridgeIp = proxyInfo.NetworkSettings.Networks[EGRESS_NETWORK]?.IPAddress ?? '';
    expect(proxyBridgeIp).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    const answer = await new Promise<string>((resolve) => {
      const sock = connect(3128, proxyBridgeIp, () => {
        sock.destroy();
        resolve('connected');
      });
      sock.setTimeout(5000, () => {
        sock.destroy();
        resolve('timeout');
      });
      sock.on('error', (e: NodeJS.ErrnoException) => resolve(String(e.code)));
    });
    expect(answer).toBe('ECONNREFUSED');
    // The gateway cannot be given a DNS name here, so the proxy's own decision function runs in the
    // proxy container with the environment the driver gave it, resolving one name to the gateway
    // and one to the allowed target.
    const decide = [
      "const p = require('/opt/choiros/egress-proxy.js');",
      'const [gw, ok] = process.argv.slice(1);',
      "const env = { ...process.env, CHOIROS_EGRESS_ALLOW: 'gw.test:80,ok.test:80' };",
      "const lookup = (h, o, cb) => cb(null, [{ address: h === 'gw.test' ? gw : ok, family: 4 }]);",
      'const proxy = p.createProxy(env, { lookup, write: () => undefined });',
      "Promise.all(['gw.test', 'ok.test'].map((h) => proxy.decide(h, 80))).then((d) => console.log(JSON.stringify(d)));",
    ].join('\n');
    const decisions = JSON.parse(
      (await execIn(egressProxyName(name), ['node', '-e', decide, gateway, allowedIp])).trim(),
    ) as unknown;
    expect(decisions).toEqual([
      { host: 'gw.test', allowed: false, reason: 'address denied range', address: gateway },
      { host: 'ok.test', allowed: true, reason: 'allow-list', address: allowedIp },
    ]);
  } finally {
    await driver.remove(name);
    await driver.removeEgressProxy(name);
    await driver.removeRunNetwork(runId);
  }
});
