/**
 * Network policy `allowlist` end to end (real Docker, Temporal, NATS): the execution lane reaches
 * an allowed host name on a project network through the run's filtering proxy; another name and a
 * raw IP are refused; every attempt is a `sandbox.egress` event; nothing of the run is left.
 * All traffic stays on networks this test and the driver create.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import Docker from 'dockerode';
import { JSONCodec, type NatsConnection } from 'nats';
import { EVENT_STREAM, runEventsFilter, type EventEnvelope, type RunView } from '../../contracts';
import { LABELS } from '../../activities/sandbox/docker-driver';
import { ROOT, env, makeGitRepo, poll, type TestApi } from '../helpers/integration';
import { startEgressStack } from '../helpers/egress';

const docker = new Docker();
const suffix = randomBytes(4).toString('hex');
const allowedHost = `choiros-it-egress-a-${suffix}`;
const otherHost = `choiros-it-egress-b-${suffix}`;
let api: TestApi;
let nats: NatsConnection;

let stack: Awaited<ReturnType<typeof startEgressStack>>;
beforeAll(async () => {
  stack = await startEgressStack(docker, 'it-egress', [
    { name: allowedHost, reply: 'hello-from-allowed' },
    { name: otherHost, reply: 'hello-from-other' },
  ]);
  ({ api, nats } = stack);
});

afterAll(async () => {
  await stack?.stop();
});

test('when a run has an egress allow-list, then only the listed name is reachable and each attempt is an event', async () => {
  const allowedIp = await stack.egress.ipOf(stack.egress.targets[0]!);
  const otherIp = await stack.egress.ipOf(stack.egress.targets[1]!);
  expect(otherIp).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
  const repo = await makeGitRepo();
  const token = await api.token();
  // An HTTP client that honours http_proxy the way curl/wget do (absolute-URI requests to the proxy).
  const client = [
    "const http = require('http');",
    'const proxy = new URL(process.env.http_proxy);',
    'const get = (u) => new Promise((done) => {',
    '  const req = http.request({ host: proxy.hostname, port: proxy.port, path: u, headers: { host: new URL(u).host } }, (r) => {',
    "    let d = ''; r.on('data', (c) => (d += c)); r.on('end', () => done(r.statusCode + ' ' + d.trim()));",
    '  });',
    "  req.on('error', (e) => done('ERR ' + e.code)); req.end();",
    '});',
    "const direct = (u) => new Promise((done) => { const r = http.get(u, { timeout: 3000 }, (x) => done('HTTP ' + x.statusCode)); r.on('timeout', () => r.destroy(Object.assign(new Error('t'), { code: 'TIMEOUT' }))); r.on('error', (e) => done('ERR ' + e.code)); });",
    "(async () => { const us = process.argv.slice(1); for (const u of us) console.log(u, '=>', await get(u)); console.log('DIRECT =>', await direct(us[0])); })();",
  ].join('\n');
  const urls = [
    `http://${allowedHost}:8080/`,
    `http://${otherHost}:8080/`,
    `http://${otherIp}:8080/`,
    `http://${allowedHost}:9999/`,
    `https://${allowedHost}:8080/`, // TLS must go through CONNECT, never as an absolute URI
  ];
  const res = await fetch(`${api.url}/v1/runs`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({
      repo: repo.path,
      network: 'allowlist',
      egress: [{ host: allowedHost, port: 8080 }],
      workItem: {
        description: 'egress',
        execute: ['node', '-e', client, ...urls],
        requiredVerifiers: ['V-README-INTACT'],
      },
    }),
  });
  expect(res.status).toBe(201);
  const { runId } = (await res.json()) as RunView;
  const view = await poll(
    async () =>
      (await (
        await fetch(`${api.url}/v1/runs/${runId}`, { headers: { authorization: `Bearer ${token}` } })
      ).json()) as RunView,
    (v) => v.finishedAt !== undefined && v.events.published === v.events.emitted,
    120_000,
  );
  expect(view.status).toBe('committed');
  if (process.env.CHOIROS_RECORD_HISTORIES === '1') {
    // A replay fixture through the egress-events and egress-summary patches (see test/replay);
    // (run-egress-allowlist.json, from before runs-v2, was retired with it: decision 0014.)
    const json = execFileSync(
      process.env.CHOIROS_TEMPORAL_BIN ?? 'temporal',
      ['workflow', 'show', '--workflow-id', runId, '--output', 'json', '--address', env.temporalAddress()],
      { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 },
    );
    await writeFile(join(ROOT, 'test/fixtures/histories/run-egress-summary.json'), json);
  }
  const out = view.execution?.outputTail ?? '';
  expect(out).toContain(`http://${allowedHost}:8080/ => 200 hello-from-allowed`);
  expect(out).not.toContain('hello-from-other');
  expect(out).toContain(`http://${otherHost}:8080/ => 403`);
  expect(out).toContain(`http://${otherIp}:8080/ => 403`);
  expect(out).toContain(`http://${allowedHost}:9999/ => 403`);
  expect(out).toContain(`https://${allowedHost}:8080/ => 403`);
  // Around the proxy there is no way out, not even to the allowed host.
  expect(out).toMatch(/DIRECT => ERR /);

  const consumer = await nats.jetstream().consumers.get(EVENT_STREAM, {
    filterSubjects: runEventsFilter({ tenant: 'acme', userId: 'alice' }, runId),
  });
  const codec = JSONCodec<EventEnvelope>();
  const events: EventEnvelope[] = [];
  for await (const m of await consumer.fetch({ max_messages: 1000, expires: 2000 })) {
    events.push(codec.decode(m.data));
    if (m.info.pending === 0) break;
  }
  const egress = events
    .filter((e) => e.event_type === 'sandbox.egress')
    .map(
      (e) => e.payload as { host: string; port: number; allowed: boolean; reason: string; address?: string },
    );
  expect(egress.filter((e) => e.allowed).every((e) => e.host === allowedHost && e.port === 8080)).toBe(true);
  // The proxy connected to the address it resolved and checked.
  expect(egress.filter((e) => e.allowed).map((e) => e.address)).toEqual([allowedIp]);
  const summaries = events.filter((e) => e.event_type === 'sandbox.egress.summary');
  expect(summaries).toHaveLength(1);
  expect(summaries[0]!.payload).toMatchObject({
    total: 5,
    allowed: 1,
    denied: 4,
    rate_limited: 0,
    complete: true,
  });
  expect(egress).toEqual(
    expect.arrayContaining([
      expect.objectContaining({ host: otherHost, port: 8080, allowed: false, reason: 'not in allow-list' }),
      expect.objectContaining({ host: otherIp, port: 8080, allowed: false, reason: 'ip literal' }),
      expect.objectContaining({ host: allowedHost, port: 9999, allowed: false }),
      expect.objectContaining({
        host: allowedHost,
        port: 8080,
        allowed: false,
        reason: 'scheme https: needs CONNECT',
      }),
    ]),
  );

  // The proxy and the run's network went with the sandbox.
  expect(
    await docker.listContainers({ all: true, filters: { label: [`${LABELS.runId}=${runId}`] } }),
  ).toEqual([]);
  await expect(docker.getNetwork(`choiros-net-${runId}`).inspect()).rejects.toMatchObject({
    statusCode: 404,
  });
});

test('when allowlist comes without egress rules, or egress names an IP, then the API answers 400', async () => {
  const token = await api.token();
  const post = (body: unknown) =>
    fetch(`${api.url}/v1/runs`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    });
  const base = {
    repo: '/srv/x',
    workItem: { description: 'x', execute: ['true'], requiredVerifiers: ['V-README-INTACT'] },
  };
  expect((await post({ ...base, network: 'allowlist' })).status).toBe(400);
  expect(
    (await post({ ...base, network: 'allowlist', egress: [{ host: '10.0.0.1', port: 80 }] })).status,
  ).toBe(400);
  expect((await post({ ...base, egress: [{ host: 'example.internal', port: 80 }] })).status).toBe(400);
});
