/**
 * Warm sandbox pool (decision 0016): execution-lane containers made and started ahead of runs, each
 * over a slot directory prepared like a run's (host-owned git dir, empty tree with its own quota
 * filesystem). A run claims one slot: the slot's directory becomes the run's directory and the
 * container is renamed to the run's container. A slot serves one run and is never returned: what
 * a run leaves goes with its sandbox (destroySandbox); the pool only ever adds newly made slots.
 *
 * Liveness across processes: each pool touches a lease file `<root>/.pool/<poolId>.lease`; a pool
 * whose lease is stale (its worker is gone) is dead, and its containers and slots are removed by
 * the next pool that starts on the same root and by the orphan sweeper (sweepDeadPools).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, stat, utimes, writeFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { POOL_CONTAINER_PREFIX } from './docker-driver';
import type { PoolDriver } from './driver';
import { POOL_DIR, removeRunDir, type Workspaces } from '../workspace/workspace';

/** The lane of runs whose tenant has no secrets: its containers hold the platform's environment only. */
export const SHARED_LANE = '*';

export interface PoolSettings {
  /** Idle slots kept ready in the shared lane (tenants without secrets); 0: none. */
  size: number;
  /**
   * Idle slots kept ready per tenant with secrets: such a lane's containers hold that tenant's
   * secrets in their environment (as its cold lanes do) and serve only that tenant's runs.
   */
  lanes?: Record<string, number>;
  /** Slots made at the same time while refilling. */
  refillConcurrency: number;
}

/** A slot handed to a run: its directory name under `.pool/`, and its idle container. */
export interface PoolSlot {
  /** SHARED_LANE, or the tenant whose secrets its container holds. */
  lane: string;
  slot: string;
  container: string;
  imageId: string;
}

/** How often a live pool touches its lease and checks its image. */
const LEASE_INTERVAL_MS = 5_000;
/** A lease older than this is a dead pool's. */
export const LEASE_STALE_MS = 30_000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30_000;

const leaseFile = (root: string, poolId: string): string => join(root, POOL_DIR, `${poolId}.lease`);
/** Slot names are `<poolId>-<n>`: the pool id is everything before the last `-`. */
const poolOfSlot = (slot: string): string => slot.slice(0, slot.lastIndexOf('-'));

/** Whether the pool `poolId` of `root` is alive (its lease was touched recently). */
async function poolAlive(root: string, poolId: string, now: number): Promise<boolean> {
  const s = await stat(leaseFile(root, poolId)).catch(() => undefined);
  return s !== undefined && now - s.mtimeMs < LEASE_STALE_MS;
}

/**
 * Removes the idle containers and slots of `root`'s dead pools (every pool but `livePoolId` whose
 * lease is stale or missing). Claimed containers (renamed to a run's name) are the run's, and the
 * run's own cleanup or the run sweep removes them. Returns what it removed.
 */
export async function sweepDeadPools(deps: {
  driver: Pick<PoolDriver, 'listPoolSandboxes' | 'remove'>;
  root: string;
  livePoolId?: string;
  logger: Logger;
  now?: number;
}): Promise<{ containers: string[]; slots: string[] }> {
  const now = deps.now ?? Date.now();
  const alive = new Map<string, boolean>();
  const isAlive = async (poolId: string): Promise<boolean> => {
    if (poolId === deps.livePoolId) return true;
    let a = alive.get(poolId);
    if (a === undefined) {
      a = await poolAlive(deps.root, poolId, now);
      alive.set(poolId, a);
    }
    return a;
  };
  const removed = { containers: [] as string[], slots: [] as string[] };
  for (const c of await deps.driver.listPoolSandboxes(deps.root)) {
    if (!c.name.startsWith(POOL_CONTAINER_PREFIX) || (await isAlive(c.poolId))) continue;
    if (await deps.driver.remove(c.id)) removed.containers.push(c.name);
  }
  const dir = join(deps.root, POOL_DIR);
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    if (entry.name.endsWith('.lease')) {
      const poolId = entry.name.slice(0, -'.lease'.length);
      if (!(await isAlive(poolId))) await rm(join(dir, entry.name), { force: true });
      continue;
    }
    if (entry.isSymbolicLink()) {
      // A claimed slot's name: kept while its run's directory exists.
      const target = await stat(join(dir, entry.name)).catch(() => undefined);
      if (target) continue;
    } else if (await isAlive(poolOfSlot(entry.name))) continue;
    await removeRunDir(join(dir, entry.name));
    removed.slots.push(entry.name);
  }
  if (removed.containers.length + removed.slots.length > 0) {
    deps.logger.info({ event: 'sandbox.pool.swept', ...removed }, "dead pools' slots removed");
  }
  return removed;
}

export class SandboxPool {
  /** This pool's id: labels its containers and names its slots and lease. */
  readonly id = `p${randomBytes(5).toString('hex')}`;
  private readonly idle: PoolSlot[] = [];
  private making = 0;
  private readonly makingIn = new Map<string, number>();
  private made = 0;
  private started = false;
  private stopped = false;
  private backoffMs = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private leaseTimer: NodeJS.Timeout | undefined;
  private readonly inFlight = new Set<Promise<void>>();

  constructor(
    private readonly deps: {
      driver: PoolDriver;
      workspaces: Pick<Workspaces, 'prepareSlot' | 'removeSlot'>;
      /** The worktree root (`<dataDir>/worktrees`); slots live in its `.pool/`. */
      root: string;
      settings: PoolSettings;
      logger: Logger;
      /** The environment a lane's containers get (a tenant lane: that tenant's secrets). */
      laneEnv?: (lane: string) => Record<string, string>;
    },
  ) {}

  /** Each lane's size: the shared lane and the tenant lanes. */
  private get lanes(): Array<[string, number]> {
    return [[SHARED_LANE, this.deps.settings.size], ...Object.entries(this.deps.settings.lanes ?? {})];
  }

  /** Idle slots ready now in one lane. */
  idleIn(lane: string): number {
    return this.idle.filter((s) => s.lane === lane).length;
  }

  /** Idle slots ready now. */
  get size(): number {
    return this.idle.length;
  }

  /** Takes the lease, removes what dead pools of this root left, and starts filling. */
  async start(): Promise<void> {
    await mkdir(join(this.deps.root, POOL_DIR), { recursive: true, mode: 0o711 });
    await writeFile(leaseFile(this.deps.root, this.id), '', { mode: 0o600 });
    await sweepDeadPools({
      driver: this.deps.driver,
      root: this.deps.root,
      livePoolId: this.id,
      logger: this.deps.logger,
    }).catch((err: unknown) =>
      this.deps.logger.warn({ event: 'sandbox.pool.sweep.failed', err }, 'could not sweep dead pools'),
    );
    this.leaseTimer = setInterval(() => void this.maintain(), LEASE_INTERVAL_MS);
    this.leaseTimer.unref();
    this.started = true;
    this.refill();
  }

  /**
   * Hands out one idle slot of `lane` whose container runs `imageId`, or undefined (the caller makes a cold
   * sandbox). Synchronous up to the hand-out, so two claims in this process never get the same
   * slot; the container's rename (adoptPoolSandbox) is atomic on the engine besides. `current`
   * says `imageId` is the configured image now: slots on any other image are stale and removed.
   */
  claim(lane: string, imageId: string, current: boolean): PoolSlot | undefined {
    if (!this.started || this.stopped) return undefined;
    if (current) {
      for (const stale of this.idle.filter((s) => s.imageId !== imageId)) this.discard(stale, 'stale_image');
    }
    const slot = this.idle.find((s) => s.lane === lane && s.imageId === imageId);
    if (slot) this.idle.splice(this.idle.indexOf(slot), 1);
    this.refill();
    return slot;
  }

  /** Removes a slot that was claimed but not used (its container and its directory). */
  async release(slot: PoolSlot): Promise<void> {
    await this.deps.driver.remove(slot.container).catch(() => undefined);
    await this.deps.workspaces.removeSlot(slot.slot).catch(() => undefined);
  }

  /** Stops refilling, waits for slots being made, and removes every idle slot and the lease. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.leaseTimer);
    clearTimeout(this.retryTimer);
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
    const idle = this.idle.splice(0);
    await Promise.all(idle.map((s) => this.release(s)));
    await rm(leaseFile(this.deps.root, this.id), { force: true });
  }

  /**
   * Stops this pool as a killed process would: no refill, no lease, nothing removed. Tests use it
   * to leave a dead pool behind for the next pool and the sweeper to find.
   */
  abandon(): void {
    this.stopped = true;
    clearInterval(this.leaseTimer);
    clearTimeout(this.retryTimer);
  }

  private discard(slot: PoolSlot, reason: string): void {
    const i = this.idle.indexOf(slot);
    if (i >= 0) this.idle.splice(i, 1);
    this.deps.logger.info({ event: 'sandbox.pool.discarded', slot: slot.slot, reason }, 'pool slot removed');
    this.track(this.release(slot));
  }

  private track(p: Promise<void>): void {
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p));
  }

  /** Touches the lease; drops slots on an image that is no longer the configured one, or dead. */
  private async maintain(): Promise<void> {
    if (this.stopped) return;
    const now = new Date();
    await utimes(leaseFile(this.deps.root, this.id), now, now).catch(() =>
      writeFile(leaseFile(this.deps.root, this.id), '', { mode: 0o600 }).catch(() => undefined),
    );
    try {
      const current = await this.deps.driver.imageId();
      const live = new Set(
        (await this.deps.driver.listPoolSandboxes(this.deps.root))
          .filter((c) => c.running)
          .map((c) => c.name),
      );
      for (const s of [...this.idle]) {
        if (s.imageId !== current) this.discard(s, 'stale_image');
        else if (!live.has(s.container)) this.discard(s, 'not_running');
      }
    } catch (err) {
      this.deps.logger.debug({ event: 'sandbox.pool.check.failed', err }, 'pool check failed');
    }
    this.refill();
  }

  /** Starts making slots until each lane's idle + being made reaches its size (in the background). */
  private refill(): void {
    const { refillConcurrency } = this.deps.settings;
    for (;;) {
      if (!this.started || this.stopped || this.retryTimer !== undefined) return;
      if (this.making >= refillConcurrency) return;
      const lane = this.lanes.find(([l, size]) => this.idleIn(l) + (this.makingIn.get(l) ?? 0) < size)?.[0];
      if (lane === undefined) return;
      this.making += 1;
      this.makingIn.set(lane, (this.makingIn.get(lane) ?? 0) + 1);
      this.track(
        this.makeSlot(lane)
          .then((slot) => {
            this.backoffMs = 0;
            if (this.stopped) {
              this.track(this.release(slot));
              return;
            }
            this.idle.push(slot);
          })
          .catch((err: unknown) => {
            this.backoffMs = Math.min(BACKOFF_MAX_MS, Math.max(BACKOFF_MIN_MS, this.backoffMs * 2));
            this.deps.logger.warn(
              { event: 'sandbox.pool.refill.failed', err, lane, retryInMs: this.backoffMs },
              'could not make a pool slot',
            );
            this.retryTimer ??= setTimeout(() => {
              this.retryTimer = undefined;
              this.refill();
            }, this.backoffMs);
            this.retryTimer.unref();
          })
          .finally(() => {
            this.making -= 1;
            this.makingIn.set(lane, (this.makingIn.get(lane) ?? 1) - 1);
            this.refill();
          }),
      );
    }
  }

  private async makeSlot(lane: string): Promise<PoolSlot> {
    this.made += 1;
    const slot = `${this.id}-${this.made}`;
    const container = `${POOL_CONTAINER_PREFIX}${slot}`;
    try {
      const tree = await this.deps.workspaces.prepareSlot(slot);
      const { imageId } = await this.deps.driver.createPoolSandbox({
        name: container,
        workspace: tree,
        poolId: this.id,
        root: this.deps.root,
        lane,
        env: lane === SHARED_LANE ? {} : (this.deps.laneEnv?.(lane) ?? {}),
      });
      return { lane, slot, container, imageId };
    } catch (err) {
      await this.release({ lane, slot, container, imageId: '' });
      throw err;
    }
  }
}
