/**
 * `npm run bench:nats-tenancy`: the figures behind docs/decisions/0011-nats-tenancy.md, measured
 * on this machine with the provisioned nats-server: resident memory per account (JetStream
 * enabled), per stream (file storage) and per consumer, and how long creating them takes. Each
 * figure is the server's RSS (`/varz` `mem`) after creating N things minus before, over N.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { AckPolicy, DeliverPolicy, StorageType, connect } from 'nats';
import { freePort, portOpen, startProcess, waitFor, type ManagedProcess } from '../infra/stack/process';

const ACCOUNTS = Number(process.env.BENCH_ACCOUNTS ?? 200);
const STREAMS = Number(process.env.BENCH_STREAMS ?? 200);
const CONSUMERS = Number(process.env.BENCH_CONSUMERS ?? 2000);

interface Server {
  url: string;
  proc: ManagedProcess;
  mem(): Promise<number>;
}

async function startServer(work: string, name: string, accounts: number): Promise<Server> {
  const binary = process.env.CHOIROS_NATS_SERVER_BIN;
  if (!binary) throw new Error('CHOIROS_NATS_SERVER_BIN is not set: run via `npm run bench:nats-tenancy`');
  const port = await freePort();
  const http = await freePort();
  const accountBlocks = Array.from(
    { length: accounts },
    (_, i) => `  T${i} { jetstream: enabled, users: [ { user: u${i}, password: p${i} } ] }`,
  );
  const conf = join(work, `${name}.conf`);
  await writeFile(
    conf,
    [
      `listen: "127.0.0.1:${port}"`,
      `http: "127.0.0.1:${http}"`,
      `jetstream { store_dir: ${JSON.stringify(join(work, name))} }`,
      'accounts {',
      ...accountBlocks,
      '}',
    ].join('\n'),
  );
  const proc = startProcess({
    name,
    command: binary,
    args: ['-c', conf],
    logFile: join(work, `${name}.log`),
  });
  await waitFor(name, () => portOpen('127.0.0.1', port), { timeoutMs: 30_000, proc });
  const mem = async (): Promise<number> => {
    await new Promise((r) => setTimeout(r, 1500)); // let allocations settle
    const varz = (await (await fetch(`http://127.0.0.1:${http}/varz`)).json()) as { mem: number };
    return varz.mem;
  };
  return { url: `nats://127.0.0.1:${port}`, proc, mem };
}

const kib = (b: number): string => `${(b / 1024).toFixed(0)} KiB`;
const mib = (b: number): string => `${(b / 1024 / 1024).toFixed(1)} MiB`;

async function main(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'choiros-bench-nats-'));
  const lines: string[] = [];
  try {
    // Accounts: a server with 1 account against one with ACCOUNTS, both JetStream-enabled.
    const one = await startServer(work, 'accounts-1', 1);
    const memOne = await one.mem();
    await one.proc.stop();
    const t0 = performance.now();
    const many = await startServer(work, `accounts-${ACCOUNTS}`, ACCOUNTS);
    const startMs = performance.now() - t0;
    const memMany = await many.mem();
    lines.push(
      `accounts: 1 → ${mib(memOne)} RSS; ${ACCOUNTS} → ${mib(memMany)} RSS (start ${startMs.toFixed(0)} ms); ` +
        `≈ ${kib((memMany - memOne) / (ACCOUNTS - 1))} per JetStream account`,
    );

    // Streams and consumers, in one account of that server.
    const nc = await connect({ servers: many.url, user: 'u0', pass: 'p0' });
    const jsm = await nc.jetstreamManager();
    const before = await many.mem();
    let t = performance.now();
    for (let i = 0; i < STREAMS; i++) {
      await jsm.streams.add({ name: `S${i}`, subjects: [`choiros.t${i}.>`], storage: StorageType.File });
    }
    const streamMs = performance.now() - t;
    const afterStreams = await many.mem();
    lines.push(
      `streams: ${STREAMS} file streams in ${streamMs.toFixed(0)} ms, ≈ ${kib((afterStreams - before) / STREAMS)} RSS each`,
    );
    const js = nc.jetstream();
    for (let i = 0; i < 1000; i++)
      await js.publish(`choiros.t0.u${i % 50}.run.r${i % 200}.note.status`, new Uint8Array(200));
    t = performance.now();
    for (let i = 0; i < CONSUMERS; i++) {
      await jsm.consumers.add('S0', {
        name: `c${i}`,
        filter_subject: `choiros.t0.u${i % 50}.run.r${i % 200}.>`,
        ack_policy: AckPolicy.None,
        deliver_policy: DeliverPolicy.All,
        inactive_threshold: 3_600_000_000_000,
      });
    }
    const consumerMs = performance.now() - t;
    const afterConsumers = await many.mem();
    lines.push(
      `consumers: ${CONSUMERS} filtered consumers on one stream in ${consumerMs.toFixed(0)} ms ` +
        `(${((consumerMs / CONSUMERS) * 1000).toFixed(0)} µs each), ≈ ${kib((afterConsumers - afterStreams) / CONSUMERS)} RSS each; ` +
        `server RSS ${mib(afterConsumers)}`,
    );
    await nc.close();
    await many.proc.stop();
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  console.log(`bench:nats-tenancy (nats-server ${process.env.CHOIROS_NATS_SERVER_BIN ?? ''})`);
  for (const l of lines) console.log(`  ${l}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
