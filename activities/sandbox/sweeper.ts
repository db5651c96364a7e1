/** Orphan sweeper: removes this host's containers and worktrees whose run is finished or unknown to Temporal. */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type Docker from 'dockerode';
import type { Logger } from 'pino';
import { isValidId } from '../../contracts';
import { LABELS, POOL_CONTAINER_PREFIX } from './docker-driver';
import type { PoolDriver } from './driver';
import { sweepDeadPools } from './pool';
import { removeRunDir } from '../workspace/workspace';

/** What Temporal says about a run's workflow: still open, closed, or never heard of. */
export type RunState = 'open' | 'closed' | 'unknown';

export interface SweeperDeps {
  docker: Docker;
  /** Only resources labelled with this host id are considered: other hosts sweep their own. */
  hostId: string;
  worktreeRoot: string;
  /** Resources younger than this are left alone, so a run being created is never swept. */
  graceMs: number;
  runState(runId: string): Promise<RunState>;
  logger: Logger;
  now?: () => number;
  /**
   * Warm pools (decision 0016) of this worktree root: idle containers and slots of pools whose worker
   * is gone (stale lease) are removed; `livePoolId` is this worker's own pool.
   */
  pools?: { driver: Pick<PoolDriver, 'listPoolSandboxes' | 'remove'>; livePoolId?: string | undefined };
}

export interface SweepResult {
  containers: string[];
  networks: string[];
  worktrees: string[];
  /** Idle pool containers and slots of dead pools. */
  pool: { containers: string[]; slots: string[] };
}

export const HOST_LABEL = 'choiros.host-id';

/** One sweep. Never throws for a single resource: it logs and moves on. */
export async function sweepOrphans(deps: SweeperDeps): Promise<SweepResult> {
  const now = deps.now?.() ?? Date.now();
  const result: SweepResult = {
    containers: [],
    networks: [],
    worktrees: [],
    pool: { containers: [], slots: [] },
  };
  const states = new Map<string, RunState>();
  const stateOf = async (runId: string): Promise<RunState> => {
    let s = states.get(runId);
    if (!s) {
      s = await deps.runState(runId);
      states.set(runId, s);
    }
    return s;
  };

  // Without a reachable engine (e.g. the local driver) worktrees are still swept.
  const containers = await deps.docker
    .listContainers({
      all: true,
      filters: { label: [`${LABELS.managed}=true`, `${HOST_LABEL}=${deps.hostId}`] },
    })
    .catch((err: unknown) => {
      deps.logger.debug({ event: 'sweeper.docker.unavailable', err }, 'no Docker engine to sweep');
      return [];
    });
  for (const c of containers) {
    const name = (c.Names[0] ?? c.Id).replace(/^\//, '');
    // Pool containers: idle ones belong to their pool (sweepDeadPools below); a claimed one is its
    // run's, named after it (labels cannot change when a run claims it).
    if (c.Labels[LABELS.pool] !== undefined && name.startsWith(POOL_CONTAINER_PREFIX)) continue;
    const claimed = c.Labels[LABELS.pool] !== undefined ? /^choiros-run-(.+)$/.exec(name)?.[1] : undefined;
    const runId = claimed ?? c.Labels[LABELS.runId] ?? '';
    if (now - c.Created * 1000 < deps.graceMs) continue;
    try {
      const state = isValidId(runId) ? await stateOf(runId) : 'unknown';
      if (state === 'open') continue;
      await deps.docker.getContainer(c.Id).remove({ force: true });
      result.containers.push(name);
      deps.logger.info(
        { event: 'sweeper.container.removed', runId, container: name, state },
        'orphan removed',
      );
    } catch (err) {
      deps.logger.warn({ event: 'sweeper.error', runId, container: name, err }, 'could not sweep container');
    }
  }

  // Networks after containers: a network with a container still attached cannot be removed.
  const networks = await deps.docker
    .listNetworks({ filters: { label: [`${LABELS.managed}=true`, `${HOST_LABEL}=${deps.hostId}`] } })
    .catch(() => []);
  for (const n of networks) {
    const runId = n.Labels?.[LABELS.runId] ?? '';
    const created = Date.parse((n as { Created?: string }).Created ?? '');
    if (Number.isFinite(created) && now - created < deps.graceMs) continue;
    try {
      const state = isValidId(runId) ? await stateOf(runId) : 'unknown';
      if (state === 'open') continue;
      await deps.docker.getNetwork(n.Id).remove();
      result.networks.push(n.Name);
      deps.logger.info({ event: 'sweeper.network.removed', runId, network: n.Name, state }, 'orphan removed');
    } catch (err) {
      deps.logger.warn({ event: 'sweeper.error', runId, network: n.Name, err }, 'could not sweep network');
    }
  }

  if (deps.pools) {
    try {
      result.pool = await sweepDeadPools({
        driver: deps.pools.driver,
        root: deps.worktreeRoot,
        ...(deps.pools.livePoolId ? { livePoolId: deps.pools.livePoolId } : {}),
        logger: deps.logger,
        now,
      });
    } catch (err) {
      deps.logger.warn({ event: 'sweeper.error', err }, 'could not sweep dead pools');
    }
  }

  const entries = await readdir(deps.worktreeRoot, { withFileTypes: true }).catch(() => []);
  for (const entry of entries) {
    const runId = entry.name;
    if (!entry.isDirectory() || !isValidId(runId)) continue;
    const path = join(deps.worktreeRoot, runId);
    try {
      const s = await stat(path);
      if (now - s.mtimeMs < deps.graceMs) continue;
      const state = await stateOf(runId);
      if (state === 'open') continue;
      await removeRunDir(path);
      result.worktrees.push(path);
      deps.logger.info({ event: 'sweeper.worktree.removed', runId, worktree: path, state }, 'orphan removed');
    } catch (err) {
      deps.logger.warn({ event: 'sweeper.error', runId, worktree: path, err }, 'could not sweep worktree');
    }
  }
  return result;
}

/** Runs `sweepOrphans` now and every `intervalMs`; `stop()` ends it and waits for a sweep in progress. */
export function startSweeper(deps: SweeperDeps, intervalMs: number): { stop(): Promise<void> } {
  let running: Promise<unknown> | undefined;
  const tick = (): void => {
    // One sweep at a time: a slow sweep is not overlapped by the next tick.
    if (running) return;
    running = sweepOrphans(deps)
      .catch((err: unknown) => deps.logger.warn({ event: 'sweeper.error', err }, 'sweep failed'))
      .finally(() => {
        running = undefined;
      });
  };
  tick();
  const timer = setInterval(tick, intervalMs);
  timer.unref();
  return {
    async stop() {
      clearInterval(timer);
      await running;
    },
  };
}
