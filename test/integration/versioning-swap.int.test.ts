/**
 * Decision 0018, proven on a real Temporal server: an execution started on release N (a worker of
 * test/fixtures/versioning/v1.ts) and in flight when that worker is replaced; its history, recorded
 * on release N, replays on release N+1's code only when N+1 puts its change behind patched(); and
 * on the patched release the in-flight execution finishes on its old path while new executions
 * take the new one, with no workflow task failed.
 */
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import {
  bundleWorkflowCode,
  NativeConnection,
  Worker,
  type WorkflowBundleWithSourceMap,
} from '@temporalio/worker';
import type { VersionedActivities } from '../fixtures/versioning/v1';
import { env, poll } from '../helpers/integration';

const dir = join(__dirname, '../fixtures/versioning');
const taskQueue = `it-versioning-${randomUUID().slice(0, 8)}`;
const activities: VersionedActivities = {
  step: (name) => Promise.resolve(name),
  audit: () => Promise.resolve('audit'),
};
const EventType = temporal.api.enums.v1.EventType;

let connection: Connection;
let native: NativeConnection;
let client: Client;
const bundles: Record<'v1' | 'v2-unpatched' | 'v2-patched', WorkflowBundleWithSourceMap> = {} as never;

beforeAll(async () => {
  connection = await Connection.connect({ address: env.temporalAddress() });
  native = await NativeConnection.connect({ address: env.temporalAddress() });
  client = new Client({ connection });
  for (const v of ['v1', 'v2-unpatched', 'v2-patched'] as const)
    bundles[v] = await bundleWorkflowCode({ workflowsPath: join(dir, `${v}.ts`) });
}, 180_000);

afterAll(async () => {
  await native?.close();
  await connection?.close();
});

function worker(release: keyof typeof bundles, buildId: string): Promise<Worker> {
  return Worker.create({
    connection: native,
    taskQueue,
    workflowBundle: bundles[release],
    activities,
    identity: `${release}@versioning-test`,
    // As the platform's workers run (decision 0008): the build id is stamped, routing is not pinned.
    workerDeploymentOptions: {
      version: { deploymentName: 'choiros-versioning-test', buildId },
      useWorkerVersioning: false,
    },
  });
}

test('when a worker of release N is replaced by release N+1, then an in-flight execution finishes only if N+1 guards its change with patched()', async () => {
  const id = `versioned-${randomUUID()}`;
  const old = await worker('v1', 'release-n');
  const handle = await old.runUntil(async () => {
    const h = await client.workflow.start('versionedWorkflow', { taskQueue, workflowId: id });
    // In flight: step a done, waiting for `go`.
    await poll(
      () => h.query<string[]>('done'),
      (d) => d.length === 1,
      30_000,
    );
    return h;
  });
  // Release N's worker is gone. Its history, as recorded on release N:
  const history = await handle.fetchHistory();

  await expect(
    Worker.runReplayHistory({ workflowBundle: bundles['v2-unpatched'] }, history, id),
  ).rejects.toThrow(/[Nn]ondetermin/);
  await expect(
    Worker.runReplayHistory({ workflowBundle: bundles['v2-patched'] }, history, id),
  ).resolves.toBeUndefined();

  const next = await worker('v2-patched', 'release-n-plus-1');
  await next.runUntil(async () => {
    await handle.signal('go');
    // The in-flight execution keeps release N's path; a new one takes N+1's.
    expect(await handle.result()).toEqual(['a', 'b']);
    const fresh = await client.workflow.start('versionedWorkflow', {
      taskQueue,
      workflowId: `${id}-new`,
    });
    await fresh.signal('go');
    expect(await fresh.result()).toEqual(['audit', 'a', 'b']);
  });
  const events = (await handle.fetchHistory()).events ?? [];
  expect(events.filter((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)).toEqual([]);
  // Workflow tasks of both releases, in order: N before the swap, N+1 after.
  const builds = events
    .filter((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
    .map(
      (e) =>
        e.workflowTaskCompletedEventAttributes?.deploymentVersion?.buildId ??
        e.workflowTaskCompletedEventAttributes?.workerVersion?.buildId,
    )
    .filter((b): b is string => Boolean(b));
  expect(builds[0]).toBe('release-n');
  expect(builds[builds.length - 1]).toBe('release-n-plus-1');
}, 180_000);
