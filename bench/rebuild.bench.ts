/**
 * `npm run bench:rebuild`: self-rebuild figures (not a test; nothing is asserted). Starts the same
 * services as the integration tests (Temporal dev server, NATS, Docker engine, sandbox image), a
 * worker and the API, and a fixture target (tiny node services, api/worker/sandbox images FROM the
 * local sandbox image, docker deployer on loopback ports).
 *  1. Orchestration overhead: the pipeline's wall time (approval wait excluded) against the sum of
 *     its stages' activity spans (resolve, verify, build, push, deploy, health, cleanup), from the
 *     workflow history. Ratio ≥ 1; what is above 1 is Temporal + workflow + event flush.
 *  2. Build cache: the build stage of a first rebuild of a ref (cold layers) against a second
 *     rebuild of the unchanged ref with its tags removed but the layers kept (layer cache), and a
 *     third with the tags present (the build activity finds the images and builds nothing).
 * Everything it creates carries `choiros.test=<bench id>` and is removed at the end.
 */
import { randomUUID } from 'node:crypto';
import Docker from 'dockerode';
import type { temporal } from '@temporalio/proto';
import globalSetup from '../test/helpers/global-setup';
import globalTeardown from '../test/helpers/global-teardown';
import { startTestApi, startTestWorker } from '../test/helpers/integration';
import { cleanupDocker, makeRebuildFixture, rebuildApi } from '../test/helpers/rebuild-fixture';
import { parseRebuildId, rebuildWorkflowId, type RebuildView } from '../contracts';

const RUNS = Number(process.env.BENCH_REBUILD_RUNS ?? 3);
const docker = new Docker();

const ms = (t: temporal.api.history.v1.IHistoryEvent): number =>
  Number(t.eventTime?.seconds ?? 0) * 1000 + Math.floor((t.eventTime?.nanos ?? 0) / 1e6);

interface Figures {
  wallMs: number;
  approvalMs: number;
  /** Time at least one pipeline activity was running. */
  stageMs: number;
  /** Summed activity durations per activity type. */
  perType: Record<string, number>;
  buildMs: number;
}

async function figures(api: Awaited<ReturnType<typeof startTestApi>>, view: RebuildView): Promise<Figures> {
  const parsed = parseRebuildId(view.rebuildId);
  if (!parsed) throw new Error(`bad rebuild id ${view.rebuildId}`);
  const history = await api.client.workflow
    .getHandle(rebuildWorkflowId(view.target), parsed.runId)
    .fetchHistory();
  const events = history.events ?? [];
  const types = new Map<string, string>();
  const started = new Map<string, number>();
  const intervals: [number, number][] = [];
  const perType: Record<string, number> = {};
  for (const e of events) {
    const id = String(e.eventId);
    if (e.activityTaskScheduledEventAttributes)
      types.set(id, e.activityTaskScheduledEventAttributes.activityType?.name ?? '');
    if (e.activityTaskStartedEventAttributes)
      started.set(String(e.activityTaskStartedEventAttributes.scheduledEventId), ms(e));
    const done = e.activityTaskCompletedEventAttributes;
    if (done) {
      const type = types.get(String(done.scheduledEventId)) ?? '';
      if (type === 'publishEvents') continue; // the background event flush overlaps every stage
      const from = started.get(String(done.scheduledEventId)) ?? ms(e);
      intervals.push([from, ms(e)]);
      perType[type] = (perType[type] ?? 0) + (ms(e) - from);
    }
  }
  // Stage time = time some stage activity was running (parallel suites counted once): the union.
  intervals.sort((a, b) => a[0] - b[0]);
  let busy = 0;
  let end = -Infinity;
  for (const [a, b] of intervals) {
    if (a > end) {
      busy += b - a;
      end = b;
    } else if (b > end) {
      busy += b - end;
      end = b;
    }
  }
  const first = events[0];
  const last = events[events.length - 1];
  const approvalMs = view.stageMs.awaiting_approval ?? 0;
  return {
    wallMs: (last && first ? ms(last) - ms(first) : 0) - approvalMs,
    approvalMs,
    stageMs: busy,
    perType,
    buildMs: view.stageMs.building ?? 0,
  };
}

async function main(): Promise<void> {
  await globalSetup();
  const id = `bench${randomUUID().slice(0, 8)}`;
  const worker = await startTestWorker(`bench-${id}`);
  let api: Awaited<ReturnType<typeof startTestApi>> | undefined;
  try {
    const overhead: number[] = [];
    const rows: string[] = [];
    const cache: { cold: number[]; layers: number[]; tags: number[] } = { cold: [], layers: [], tags: [] };
    for (let i = 0; i < RUNS; i++) {
      // A fresh target per round; the previous round's images (and their layers) are gone, so the first build is cold.
      const fx = await makeRebuildFixture(id, `b${i}-${id}`.slice(0, 23), {}, { SLOW: '2' });
      await api?.stop();
      api = await startTestApi({ rebuildTargets: [fx.target] });
      const rb = rebuildApi(api);
      const once = async (): Promise<RebuildView> => {
        const started = await rb.start({ target: fx.target.name, ref: 'main' });
        if (started.status !== 201)
          throw new Error(`start: ${started.status} ${JSON.stringify(started.body)}`);
        await rb.waitStage(started.body.rebuildId, ['awaiting_approval'], 300_000);
        await rb.decide(started.body.rebuildId, 'approve');
        const done = await rb.waitStage(
          started.body.rebuildId,
          ['completed', 'rolled_back', 'failed'],
          300_000,
        );
        if (done.stage !== 'completed')
          throw new Error(`rebuild ended ${done.stage}: ${JSON.stringify(done.error)}`);
        return done;
      };
      const cold = await once();
      const f = await figures(api, cold);
      overhead.push(f.wallMs / f.stageMs);
      rows.push(
        `round ${i + 1}: wall ${f.wallMs} ms (approval ${f.approvalMs} ms excluded), stage activities ${f.stageMs} ms ${JSON.stringify(f.perType)}, ratio ${(f.wallMs / f.stageMs).toFixed(3)}`,
      );
      cache.cold.push(f.buildMs);
      // Same ref again with the tags removed but their layers kept: the engine's layer cache.
      for (const image of cold.images)
        await docker.getImage(image.tag).remove({ force: true, noprune: true });
      const layered = await once();
      cache.layers.push(layered.stageMs.building ?? 0);
      // And with the tags present: the build activity finds the images.
      const tagged = await once();
      cache.tags.push(tagged.stageMs.building ?? 0);
      rows.push(
        `round ${i + 1}: build stage cold ${f.buildMs} ms, layer cache ${layered.stageMs.building} ms (${layered.images.map((x) => `${x.cachedSteps}/${x.totalSteps}`).join(' ')} steps cached), tags present ${tagged.stageMs.building} ms`,
      );
      await api.stop();
      api = undefined;
      await cleanupDocker(docker, id);
    }
    const median = (xs: number[]): number => {
      const s = [...xs].sort((a, b) => a - b);
      return s[Math.floor(s.length / 2)] ?? NaN;
    };
    for (const r of rows) process.stdout.write(`${r}\n`);
    const summary = {
      rounds: RUNS,
      overheadRatioMedian: Number(median(overhead).toFixed(3)),
      buildColdMsMedian: median(cache.cold),
      buildLayerCacheMsMedian: median(cache.layers),
      buildTagsPresentMsMedian: median(cache.tags),
      cacheRatioLayers: Number((median(cache.layers) / median(cache.cold)).toFixed(3)),
      cacheRatioTags: Number((median(cache.tags) / median(cache.cold)).toFixed(3)),
    };
    process.stdout.write(`${JSON.stringify(summary)}\n`);
    await cleanupDocker(docker, id);
  } finally {
    await api?.stop();
    await worker.stop();
    await cleanupDocker(docker, id).catch(() => undefined);
    await globalTeardown();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(
      `bench:rebuild: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    process.exit(1);
  },
);
