/** The warm pool's bookkeeping (activities/sandbox/pool.ts) over a fake engine and fake slots, and its settings. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { SHARED_LANE, SandboxPool } from '../../activities/sandbox/pool';
import type { PoolDriver, PoolSandboxInfo, PoolSandboxSpec } from '../../activities/sandbox/driver';
import { poll } from '../helpers/poll';
import { loadWorkerConfig } from '../../worker/config';

/** An engine that keeps containers in a map; `failNext` fails that many creates. */
class FakeEngine implements PoolDriver {
  image = 'sha256:one';
  readonly containers = new Map<string, PoolSandboxInfo & { root: string }>();
  created = 0;
  failNext = 0;
  concurrent = 0;
  maxConcurrent = 0;
  imageId(): Promise<string> {
    return Promise.resolve(this.image);
  }
  readonly envs = new Map<string, Record<string, string>>();
  async createPoolSandbox(spec: PoolSandboxSpec): Promise<{ imageId: string }> {
    this.envs.set(spec.name, spec.env);
    this.concurrent += 1;
    this.maxConcurrent = Math.max(this.maxConcurrent, this.concurrent);
    try {
      await new Promise((r) => setTimeout(r, 5));
      if (this.failNext > 0) {
        this.failNext -= 1;
        throw new Error('engine says no');
      }
      this.created += 1;
      const imageId = this.image;
      this.containers.set(spec.name, {
        id: spec.name,
        name: spec.name,
        poolId: spec.poolId,
        imageId,
        running: true,
        root: spec.root,
      });
      return { imageId };
    } finally {
      this.concurrent -= 1;
    }
  }
  adoptPoolSandbox(poolName: string, runName: string): Promise<boolean> {
    const c = this.containers.get(poolName);
    if (!c) return Promise.resolve(false);
    this.containers.delete(poolName);
    this.containers.set(runName, { ...c, name: runName });
    return Promise.resolve(true);
  }
  listPoolSandboxes(root: string): Promise<PoolSandboxInfo[]> {
    return Promise.resolve([...this.containers.values()].filter((c) => c.root === root));
  }
  remove(name: string): Promise<boolean> {
    return Promise.resolve(this.containers.delete(name));
  }
}

const slots = () => {
  const made = new Set<string>();
  return {
    made,
    prepareSlot: (slot: string) => {
      made.add(slot);
      return Promise.resolve(`/slots/${slot}/tree`);
    },
    removeSlot: (slot: string) => {
      made.delete(slot);
      return Promise.resolve();
    },
  };
};

let root: string;
const started: SandboxPool[] = [];
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'pool-unit-'));
});
afterEach(async () => {
  for (const p of started.splice(0)) await p.stop();
  await rm(root, { recursive: true, force: true });
});

function makePool(engine: FakeEngine, size: number, refillConcurrency = 2, lanes?: Record<string, number>) {
  const ws = slots();
  const pool = new SandboxPool({
    driver: engine,
    workspaces: ws,
    root,
    settings: { size, refillConcurrency, ...(lanes ? { lanes } : {}) },
    laneEnv: (tenant) => ({ SECRET: `${tenant}-secret` }),
    logger: pino({ level: 'silent' }),
  });
  started.push(pool);
  return { pool, ws };
}

const full = (pool: SandboxPool, size: number) =>
  poll(
    async () => pool.size,
    (n) => n === size,
    5_000,
    5,
  );

test('when a pool is not started, then it hands out nothing and makes nothing', async () => {
  const engine = new FakeEngine();
  const { pool } = makePool(engine, 3);
  expect(pool.claim(SHARED_LANE, engine.image, true)).toBeUndefined();
  await new Promise((r) => setTimeout(r, 30));
  expect(engine.created).toBe(0);
});

test('when a pool starts, then it fills to its size, never making more at once than its refill concurrency', async () => {
  const engine = new FakeEngine();
  const { pool } = makePool(engine, 5, 2);
  await pool.start();
  await full(pool, 5);
  expect(engine.created).toBe(5);
  expect(engine.maxConcurrent).toBeLessThanOrEqual(2);
});

test('when slots are claimed, then each is handed out once, and the refill adds new slots, never a claimed one', async () => {
  const engine = new FakeEngine();
  const { pool } = makePool(engine, 2);
  await pool.start();
  const handed: string[] = [];
  for (let i = 0; i < 6; i++) {
    await full(pool, 2);
    const a = pool.claim(SHARED_LANE, engine.image, true);
    const b = pool.claim(SHARED_LANE, engine.image, true);
    // Two claims in a row get two different slots; a third finds none until the refill.
    expect(pool.claim(SHARED_LANE, engine.image, true)).toBeUndefined();
    for (const s of [a, b]) {
      expect(s).toBeDefined();
      handed.push(s?.container ?? '');
    }
  }
  expect(new Set(handed).size).toBe(12);
  await full(pool, 2);
  expect(engine.created).toBe(14);
});

test('when the configured image changes, then a claim drops the stale slots instead of handing them out', async () => {
  const engine = new FakeEngine();
  const { pool, ws } = makePool(engine, 2);
  await pool.start();
  await full(pool, 2);
  const stale = [...engine.containers.keys()];
  engine.image = 'sha256:two';
  // A rerun pinned to the old image may still take one (it asked for that image).
  expect(pool.claim(SHARED_LANE, 'sha256:one', false)?.imageId).toBe('sha256:one');
  expect(pool.claim(SHARED_LANE, 'sha256:two', true)).toBeUndefined();
  await poll(
    async () => stale.filter((n) => engine.containers.has(n)).length,
    (n) => n === 1, // the pinned claim's container is the run's now; the other is gone
    5_000,
    5,
  );
  await full(pool, 2);
  const fresh = pool.claim(SHARED_LANE, 'sha256:two', true);
  expect(fresh?.imageId).toBe('sha256:two');
  expect(stale).not.toContain(fresh?.container);
  expect([...ws.made].length).toBeGreaterThanOrEqual(2);
});

test('when the engine fails to create, then the pool backs off and fills once it answers again', async () => {
  const engine = new FakeEngine();
  engine.failNext = 3;
  const { pool, ws } = makePool(engine, 2, 1);
  await pool.start();
  await full(pool, 2);
  expect(engine.created).toBe(2);
  // Failed slots were cleaned up: only the two ready slots' directories exist.
  expect(ws.made.size).toBe(2);
});

test('when a pool stops, then its idle containers and slots are removed and it hands out nothing more', async () => {
  const engine = new FakeEngine();
  const { pool, ws } = makePool(engine, 3);
  await pool.start();
  await full(pool, 3);
  await pool.stop();
  expect(engine.containers.size).toBe(0);
  expect(ws.made.size).toBe(0);
  expect(pool.claim(SHARED_LANE, engine.image, true)).toBeUndefined();
});

test("when tenant lanes are configured, then each fills on its own, holds its tenant's secrets, and serves only its tenant", async () => {
  const engine = new FakeEngine();
  const { pool } = makePool(engine, 1, 2, { acme: 2, globex: 1 });
  await pool.start();
  await poll(
    async () => [pool.idleIn(SHARED_LANE), pool.idleIn('acme'), pool.idleIn('globex')].join(','),
    (v) => v === '1,2,1',
    5_000,
    5,
  );
  const a = pool.claim('acme', engine.image, true);
  expect(a?.lane).toBe('acme');
  expect(engine.envs.get(a?.container ?? '')).toEqual({ SECRET: 'acme-secret' });
  const shared = pool.claim(SHARED_LANE, engine.image, true);
  expect(engine.envs.get(shared?.container ?? '')).toEqual({});
  // The shared lane is empty now: its runs never get a tenant lane's container.
  expect(pool.claim(SHARED_LANE, engine.image, true)).toBeUndefined();
  expect(pool.claim('initech', engine.image, true)).toBeUndefined();
  expect(pool.claim('globex', engine.image, true)?.lane).toBe('globex');
});

describe('CHOIROS_SANDBOX_POOL_* settings', () => {
  test('when unset, then the pool is off with no tenant lanes', () => {
    const c = loadWorkerConfig({});
    expect(c.CHOIROS_SANDBOX_POOL_SIZE).toBe(0);
    expect(c.CHOIROS_SANDBOX_POOL_LANES).toEqual({});
    expect(c.CHOIROS_SANDBOX_POOL_REFILL).toBe(2);
  });

  test('when lanes are listed, then each tenant gets its size; a malformed entry is refused by name', () => {
    expect(
      loadWorkerConfig({ CHOIROS_SANDBOX_POOL_SIZE: '4', CHOIROS_SANDBOX_POOL_LANES: 'acme:2, globex:0' })
        .CHOIROS_SANDBOX_POOL_LANES,
    ).toEqual({ acme: 2, globex: 0 });
    for (const bad of ['acme', 'acme:65', 'a/b:1', 'acme:1:2', 'acme:-1']) {
      expect(() => loadWorkerConfig({ CHOIROS_SANDBOX_POOL_LANES: bad })).toThrow(
        /CHOIROS_SANDBOX_POOL_LANES/,
      );
    }
    expect(() => loadWorkerConfig({ CHOIROS_SANDBOX_POOL_SIZE: '65' })).toThrow(/CHOIROS_SANDBOX_POOL_SIZE/);
  });
});
