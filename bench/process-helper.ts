/**
 * Process-helper benchmark (`npm run bench:process-helper`), local only, bounded: the cost to the
 * worker's event loop of the git calls every run makes, started directly (execFile from the worker)
 * vs through the process helper (activities/workspace/process-helper.ts), in one process whose heap
 * is grown to a loaded worker's size first. Blocks alternate A/B/A/B. Per path it prints wall time,
 * calls/s, the main thread's CPU time per call and the event loop's delay (p99 and max) while the
 * calls run, then the ratios.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { ProcessHelper } from '../activities/workspace/process-helper';
import { pct } from './util';

const HEAP_MB = Number(process.env.BENCH_HEAP_MB ?? 600);
const CALLS = Number(process.env.BENCH_CALLS ?? 400);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 8);
const BLOCKS = Number(process.env.BENCH_BLOCKS ?? 2);

const gitEnv = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: tmpdir(), LC_ALL: 'C' };

const execFileAsync = promisify(execFile);
const direct = async (args: string[], cwd: string): Promise<string> =>
  (await execFileAsync('git', args, { cwd, env: gitEnv })).stdout;

interface Block {
  seconds: number;
  cpuMsPerCall: number;
  delayP99Ms: number;
  delayMaxMs: number;
}

async function block(call: () => Promise<unknown>): Promise<Block> {
  const delay = monitorEventLoopDelay({ resolution: 5 });
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  delay.enable();
  let next = 0;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next++ < CALLS) await call();
    }),
  );
  delay.disable();
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  return {
    seconds,
    cpuMsPerCall: (cpu.user + cpu.system) / 1000 / CALLS,
    delayP99Ms: delay.percentile(99) / 1e6,
    delayMaxMs: delay.max / 1e6,
  };
}

async function main(): Promise<void> {
  // A worker under load holds hundreds of MiB; a fork's cost grows with it.
  const ballast: Buffer[] = [];
  for (let i = 0; i < HEAP_MB; i++) ballast.push(Buffer.alloc(1024 * 1024, i & 0xff));
  const objects = Array.from({ length: HEAP_MB * 2000 }, (_, i) => ({ i, s: `object-${i}` }));

  const repo = await mkdtemp(join(tmpdir(), 'choiros-bench-helper-'));
  await direct(['init', '-q', '-b', 'main'], repo);
  await direct(
    ['-c', 'user.name=b', '-c', 'user.email=b@b', 'commit', '-q', '--allow-empty', '-m', 'base'],
    repo,
  );
  const helper = new ProcessHelper();
  await helper.run('git', ['rev-parse', 'HEAD'], { cwd: repo, env: gitEnv }); // started before timing

  console.log(
    `process helper: ${CALLS} × git rev-parse HEAD per block, ${CONCURRENCY} at once, heap grown by ${HEAP_MB} MiB ` +
      `(rss ${Math.round(process.memoryUsage().rss / 2 ** 20)} MiB), ${BLOCKS} blocks per path, alternating`,
  );
  const results: Record<'direct' | 'helper', Block[]> = { direct: [], helper: [] };
  for (let b = 0; b < BLOCKS; b++) {
    results.direct.push(await block(() => direct(['rev-parse', 'HEAD'], repo)));
    results.helper.push(
      await block(() => helper.run('git', ['rev-parse', 'HEAD'], { cwd: repo, env: gitEnv })),
    );
  }
  helper.close();
  await rm(repo, { recursive: true, force: true });

  const summary = (name: 'direct' | 'helper') => {
    const bs = results[name];
    const seconds = bs.reduce((s, b) => s + b.seconds, 0);
    return {
      callsPerSecond: (CALLS * bs.length) / seconds,
      cpuMsPerCall: pct(
        bs.map((b) => b.cpuMsPerCall),
        50,
      ),
      delayP99Ms: Math.max(...bs.map((b) => b.delayP99Ms)),
      delayMaxMs: Math.max(...bs.map((b) => b.delayMaxMs)),
    };
  };
  const d = summary('direct');
  const h = summary('helper');
  const row = (name: string, s: typeof d): string =>
    `   ${name.padEnd(8)} ${s.callsPerSecond.toFixed(0).padStart(6)} calls/s   main-thread CPU ${s.cpuMsPerCall.toFixed(2)} ms/call   ` +
    `event-loop delay p99 ${s.delayP99Ms.toFixed(1)} ms, max ${s.delayMaxMs.toFixed(1)} ms`;
  console.log(row('direct', d));
  console.log(row('helper', h));
  console.log(
    `   ratio direct/helper: CPU per call ${(d.cpuMsPerCall / h.cpuMsPerCall).toFixed(1)}×, ` +
      `loop delay p99 ${(d.delayP99Ms / h.delayP99Ms).toFixed(1)}×, calls/s ${(h.callsPerSecond / d.callsPerSecond).toFixed(2)}× (helper/direct)`,
  );
  // Referenced here so the ballast stays alive (and the process large) through every block.
  console.log(`   ballast held throughout: ${ballast.length} MiB of buffers, ${objects.length} objects`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
