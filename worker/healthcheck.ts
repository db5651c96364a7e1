/**
 * Container health check of a worker (docker-compose.yml): healthy when this container's worker is
 * polling both the orchestration queue (workflow tasks) and its host's sandbox queue (activity
 * tasks), as Temporal reports it. Pollers are matched by the SDK's default identity
 * `<pid>@<hostname>`, so each replica checks itself. Reads the worker's own configuration.
 * Exit 0 = healthy, 1 = not (with one line saying why).
 */
import { hostname } from 'node:os';
import { Connection } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { TASK_QUEUES, hostSandboxQueue } from '../contracts';
import { loadWorkerConfig } from './config';
import { temporalConnectionSecurity } from '../infra/tls/connections';

/** A poller seen longer ago than this is stale (idle long polls return about every minute). */
const MAX_POLL_AGE_MS = 150_000;

type TaskQueueType = temporal.api.enums.v1.TaskQueueType;
const TaskQueueType = temporal.api.enums.v1.TaskQueueType;

async function pollingHere(
  conn: Connection,
  namespace: string,
  queue: string,
  type: TaskQueueType,
): Promise<boolean> {
  const res = await conn.workflowService.describeTaskQueue({
    namespace,
    taskQueue: { name: queue },
    taskQueueType: type,
  });
  const suffix = `@${hostname()}`;
  return (res.pollers ?? []).some((p) => {
    if (!p.identity?.endsWith(suffix)) return false;
    const seconds = Number(p.lastAccessTime?.seconds ?? 0);
    return Date.now() - seconds * 1000 < MAX_POLL_AGE_MS;
  });
}

async function main(): Promise<void> {
  const config = loadWorkerConfig(process.env);
  const conn = await Connection.connect({
    address: config.TEMPORAL_ADDRESS,
    connectTimeout: '5 seconds',
    ...(await temporalConnectionSecurity(config)),
  });
  try {
    const checks: [string, TaskQueueType][] = [
      [TASK_QUEUES.orchestration, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW],
      [hostSandboxQueue(config.CHOIROS_HOST_ID), TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY],
    ];
    for (const [queue, type] of checks) {
      if (!(await pollingHere(conn, config.TEMPORAL_NAMESPACE, queue, type))) {
        throw new Error(`no recent poller from ${hostname()} on ${queue}`);
      }
    }
  } finally {
    await conn.close();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`unhealthy: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
