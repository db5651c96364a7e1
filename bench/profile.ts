/**
 * Summarises V8 CPU profiles (`node --cpu-prof`) of the worker into where its CPU went: the
 * workflow thread (workflow code, the SDK's workflow runtime) and the main thread (activities, git
 * spawns, NATS, the SDK's bridge, logging, GC). Used by `bench:load` with BENCH_LOAD_PROFILE=1.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';

const profileSchema = z.object({
  nodes: z.array(
    z.object({
      id: z.number(),
      callFrame: z.object({ functionName: z.string(), url: z.string() }),
    }),
  ),
  samples: z.array(z.number()),
  timeDeltas: z.array(z.number()),
  startTime: z.number(),
  endTime: z.number(),
});

/** Buckets, first match wins; the order puts specific libraries before the generic ones. */
const BUCKETS: [string, (fn: string, url: string) => boolean][] = [
  ['idle', (fn) => fn === '(idle)'],
  ['garbage collection', (fn) => fn === '(garbage collector)'],
  ['native / V8 (program)', (fn) => fn === '(program)'],
  [
    'bundling (webpack)',
    (_, url) => /\/(webpack|terser|enhanced-resolve|acorn|@swc|swc-loader|source-map)/.test(url),
  ],
  ['workflow code', (_, url) => /workflow-bundle|\/workflows\//.test(url)],
  ['Temporal SDK: workflow runtime', (_, url) => url.includes('@temporalio/workflow')],
  ['Temporal SDK: protobuf', (_, url) => /@temporalio\/proto|protobufjs/.test(url)],
  ['Temporal SDK: worker', (_, url) => /@temporalio\/(worker|core-bridge|common|client|activity)/.test(url)],
  ['activities: sandbox + workspace', (_, url) => /\/activities\/(sandbox|workspace)\//.test(url)],
  ['activities: events', (_, url) => /\/activities\/events\//.test(url)],
  ['activities: other', (_, url) => url.includes('/activities/')],
  ['NATS client', (_, url) => url.includes('/nats/')],
  ['logging (pino)', (_, url) => /\/pino|sonic-boom|thread-stream/.test(url)],
  ['child processes (spawn)', (_, url) => /child_process/.test(url)],
  ['tracing (OpenTelemetry)', (_, url) => url.includes('@opentelemetry')],
  ['transpiling (tsx/esbuild)', (_, url) => /\/(tsx|esbuild)\//.test(url)],
  ['validation (zod)', (_, url) => url.includes('/zod/')],
  ['Docker client', (_, url) => /\/(dockerode|docker-modem)\//.test(url)],
  ['Node internals', (_, url) => url.startsWith('node:')],
  ['unattributed native frames', (fn, url) => url === '' && fn !== ''],
  ['other', () => true],
];

export interface ProfileSummary {
  file: string;
  /** Which thread or process, from what ran in it. */
  role: string;
  /** The URLs that took most of the `other` bucket, to refine the buckets. */
  otherTop: { url: string; ms: number }[];
  totalMs: number;
  busyMs: number;
  buckets: { name: string; ms: number }[];
}

export async function summariseProfiles(dir: string): Promise<ProfileSummary[]> {
  const files = (await readdir(dir).catch(() => [])).filter((f) => f.endsWith('.cpuprofile'));
  const out: ProfileSummary[] = [];
  for (const file of files) {
    const p = profileSchema.parse(JSON.parse(await readFile(join(dir, file), 'utf8')));
    const bucketOf = new Map<number, string>();
    for (const n of p.nodes) {
      const { functionName, url } = n.callFrame;
      bucketOf.set(n.id, BUCKETS.find(([, match]) => match(functionName, url))?.[0] ?? 'other');
    }
    const urlOf = new Map(p.nodes.map((n) => [n.id, n.callFrame.url || n.callFrame.functionName]));
    const ms = new Map<string, number>();
    const other = new Map<string, number>();
    p.samples.forEach((id, i) => {
      const b = bucketOf.get(id) ?? 'other';
      const dt = (p.timeDeltas[i] ?? 0) / 1000;
      ms.set(b, (ms.get(b) ?? 0) + dt);
      if (b === 'other') {
        const url = urlOf.get(id) ?? '?';
        other.set(url, (other.get(url) ?? 0) + dt);
      }
    });
    const has = (b: string): boolean => (ms.get(b) ?? 0) > 0;
    const urls = p.nodes.map((n) => n.callFrame.url);
    const share = (b: string): number => (ms.get(b) ?? 0) / Math.max(1, (p.endTime - p.startTime) / 1000);
    const role = has('workflow code')
      ? 'workflow thread'
      : share('bundling (webpack)') > 0.25
        ? 'workflow bundling (child, start-up only)'
        : urls.some((u) => u.includes('process-helper-child'))
          ? 'git process helper (child)'
          : 'main thread (activities, SDK bridge)';
    const totalMs = (p.endTime - p.startTime) / 1000;
    const busyMs = [...ms].filter(([b]) => b !== 'idle').reduce((s, [, v]) => s + v, 0);
    out.push({
      file,
      role,
      otherTop: [...other]
        .map(([url, v]) => ({ url: url.replace(/^.*node_modules\//, ''), ms: v }))
        .sort((a, b) => b.ms - a.ms)
        .slice(0, 3),
      totalMs,
      busyMs,
      buckets: [...ms].map(([name, v]) => ({ name, ms: v })).sort((a, b) => b.ms - a.ms),
    });
  }
  return out.sort((a, b) => b.busyMs - a.busyMs);
}

/** Lines for a bench report: each profiled thread's busy time and its largest buckets, per run. */
export function formatProfiles(summaries: ProfileSummary[], runs: number): string[] {
  const lines: string[] = [];
  for (const s of summaries.filter((x) => x.busyMs > 1000)) {
    lines.push(
      `  ${s.role} (${s.file}): busy ${(s.busyMs / 1000).toFixed(1)} s of ${(s.totalMs / 1000).toFixed(1)} s (${(s.busyMs / runs).toFixed(1)} ms per run)`,
    );
    for (const b of s.buckets.filter((x) => x.name !== 'idle').slice(0, 8)) {
      lines.push(
        `    ${b.name.padEnd(34)} ${(b.ms / 1000).toFixed(1).padStart(7)} s  ${((100 * b.ms) / s.busyMs).toFixed(0).padStart(3)} %  ${(b.ms / runs).toFixed(1)} ms/run`,
      );
    }
    if (s.otherTop.length > 0)
      lines.push(
        `    other, largest: ${s.otherTop.map((o) => `${o.url} ${(o.ms / 1000).toFixed(1)} s`).join('; ')}`,
      );
  }
  return lines;
}
