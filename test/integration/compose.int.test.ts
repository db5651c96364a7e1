/**
 * docker-compose.yml as the compose CLI resolves it (`docker compose config`, else docker-compose
 * v1), parsed and checked against the project's own loaders; and its one-shot jobs run for real:
 * nats-init's output drives a real nats-server (operator mode, JetStream), temporal-setup registers
 * a namespace's search attributes on the test Temporal server, and the worker health check tells a
 * polling worker from a missing one. Images are never pulled or built here.
 */
import { execFile, execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { promisify } from 'node:util';
import { Connection } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { connect, credsAuthenticator, type NatsConnection } from 'nats';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { EGRESS_PROXY_SCRIPT } from '../../activities/sandbox/docker-driver';
import { apiConfigSchema, loadApiConfig } from '../../api/config';
import { mintUserCreds } from '../../api/nats/credentials';
import { SEARCH_ATTRIBUTE_NAMES } from '../../contracts';
import { NATS_INIT_FILES } from '../../infra/compose/nats-init';
import { temporalSetupEnvSchema } from '../../infra/compose/temporal-setup';
import { freePort, portOpen, startProcess, waitFor, type ManagedProcess } from '../../infra/stack/process';
import { loadWorkerConfig, workerConfigSchema } from '../../worker/config';
import { ROOT, env, poll, startTestWorker } from '../helpers/integration';

const run = promisify(execFile);

// --- The compose CLI and a normalised view of its output (v1 prints strings, v2 objects) ----------

function composeCommand(): string[] {
  const configured = process.env.CHOIROS_COMPOSE;
  if (configured) return configured.split(' ').filter(Boolean);
  try {
    execFileSync('docker', ['compose', 'version'], { stdio: 'ignore' });
    return ['docker', 'compose'];
  } catch {
    return ['docker-compose'];
  }
}

const REQUIRED = { POSTGRES_PASSWORD: 'not-a-real-password', AUTH_ISSUER: 'https://issuer.example.test' };

/** Runs `config` on the real file with only the given variables (an empty --env-file: a developer's .env never leaks in). */
async function composeConfig(vars: Record<string, string>): Promise<{ ok: boolean; out: string }> {
  const emptyEnv = join(await mkdtemp(join(env.workDir(), 'compose-')), 'empty.env');
  await writeFile(emptyEnv, '');
  const [cmd = 'docker-compose', ...pre] = composeCommand();
  const args = [
    ...pre,
    '--env-file',
    emptyEnv,
    '-f',
    join(ROOT, 'docker-compose.yml'),
    '--project-directory',
    ROOT,
    '--profile',
    'build',
    'config',
  ];
  try {
    const { stdout } = await run(cmd, args, {
      cwd: ROOT,
      env: { PATH: process.env.PATH, HOME: process.env.HOME, ...vars },
    });
    return { ok: true, out: stdout };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    return { ok: false, out: `${e.stderr ?? ''}${e.stdout ?? ''}` || e.message };
  }
}

// Compose v2 prints ports and volumes in long syntax; v1 in short (strings).
const portObject = z
  .object({ host_ip: z.string().optional(), published: z.coerce.number(), target: z.coerce.number() })
  .passthrough();
const volumeObject = z
  .object({ source: z.string().default(''), target: z.string(), read_only: z.boolean().optional() })
  .passthrough();
const resolvedSchema = z.object({
  services: z.record(
    z.string(),
    z
      .object({
        image: z.string().optional(),
        restart: z.string().optional(),
        healthcheck: z.object({ test: z.union([z.array(z.string()), z.string()]) }).optional(),
        depends_on: z.record(z.string(), z.object({ condition: z.string() })).optional(),
        environment: z.record(z.string(), z.union([z.string(), z.number(), z.null()])).optional(),
        ports: z.array(z.union([z.string(), portObject])).optional(),
        volumes: z.array(z.union([z.string(), volumeObject])).optional(),
        command: z.union([z.array(z.string()), z.string()]).optional(),
        user: z.string().optional(),
        build: z
          .object({ dockerfile: z.string().optional(), args: z.record(z.string(), z.string()).optional() })
          .optional(),
      })
      .passthrough(),
  ),
  volumes: z.record(z.string(), z.unknown()).optional(),
});
type Resolved = z.output<typeof resolvedSchema>;
type Service = Resolved['services'][string];

interface Mount {
  source: string;
  target: string;
  readOnly: boolean;
}
function mounts(s: Service): Mount[] {
  return (s.volumes ?? []).map((v) => {
    if (typeof v === 'string') {
      const [source = '', target = '', mode = 'rw'] = v.split(':');
      return { source, target, readOnly: mode.split(',').includes('ro') };
    }
    return { source: v.source, target: v.target, readOnly: v.read_only === true };
  });
}

interface Published {
  hostIp: string;
  published: number;
  target: number;
}
function published(s: Service): Published[] {
  return (s.ports ?? []).map((p) => {
    if (typeof p === 'string') {
      const m = /^(?:([\d.]+):)?(\d+):(\d+)(?:\/\w+)?$/.exec(p);
      if (!m) throw new Error(`unexpected port syntax ${p}`);
      return { hostIp: m[1] ?? '0.0.0.0', published: Number(m[2]), target: Number(m[3]) };
    }
    return {
      hostIp: String(p.host_ip ?? '0.0.0.0'),
      published: Number(p.published),
      target: Number(p.target),
    };
  });
}

/** The environment a container gets: unset pass-through variables (null) are not set at all. */
function environment(s: Service): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(s.environment ?? {})) if (v !== null) out[k] = String(v);
  return out;
}

function commandOf(s: Service): string[] {
  return typeof s.command === 'string' ? s.command.split(' ') : (s.command ?? []);
}

function flag(args: string[], name: string): string {
  const prefix = `--${name}=`;
  const a = args.find((x) => x.startsWith(prefix));
  if (!a) throw new Error(`--${name} missing from ${args.join(' ')}`);
  return a.slice(prefix.length);
}

/** The mount of `s` whose target contains `path`. */
function mountHolding(s: Service, path: string): Mount | undefined {
  return mounts(s).find((m) => path === m.target || path.startsWith(`${m.target}/`));
}

const SERVICES = {
  longRunning: ['postgresql', 'temporal', 'temporal-ui', 'nats', 'api', 'worker'],
  oneShot: ['temporal-schema', 'temporal-setup', 'nats-init'],
  buildOnly: ['deps', 'sandbox'],
};

describe('docker-compose.yml (resolved by the compose CLI)', () => {
  let resolved: Resolved;
  const svc = (name: string): Service => {
    const s = resolved.services[name];
    if (!s) throw new Error(`service ${name} missing`);
    return s;
  };

  beforeAll(async () => {
    const { ok, out } = await composeConfig(REQUIRED);
    if (!ok) throw new Error(`compose config failed:\n${out}`);
    resolved = resolvedSchema.parse(parseYaml(out));
  });

  it('has exactly the expected services', () => {
    expect(Object.keys(resolved.services).sort()).toEqual(
      [...SERVICES.longRunning, ...SERVICES.oneShot, ...SERVICES.buildOnly].sort(),
    );
  });

  it('gives every long-running service a health check and a restart policy; one-shots never restart', () => {
    for (const name of SERVICES.longRunning) {
      const s = svc(name);
      const test = s.healthcheck?.test;
      expect({ name, hasTest: Array.isArray(test) ? test.length > 1 && test[0] !== 'NONE' : !!test }).toEqual(
        {
          name,
          hasTest: true,
        },
      );
      expect({ name, restart: s.restart }).toEqual({ name, restart: 'unless-stopped' });
    }
    for (const name of [...SERVICES.oneShot, ...SERVICES.buildOnly]) {
      expect({ name, restart: svc(name).restart }).toEqual({ name, restart: 'no' });
    }
  });

  it('orders start-up by health and completion, never by mere start', () => {
    for (const [name, s] of Object.entries(resolved.services)) {
      for (const [dep, { condition }] of Object.entries(s.depends_on ?? {})) {
        const expected = SERVICES.longRunning.includes(dep)
          ? 'service_healthy'
          : 'service_completed_successfully';
        expect({ name, dep, condition }).toEqual({ name, dep, condition: expected });
      }
    }
    const deps = (n: string): string[] => Object.keys(svc(n).depends_on ?? {}).sort();
    expect(deps('api')).toEqual(['nats', 'temporal-setup']);
    expect(deps('worker')).toEqual(['nats', 'temporal-setup']);
    expect(deps('nats')).toEqual(['nats-init']);
    expect(deps('temporal')).toEqual(['temporal-schema']);
    expect(deps('temporal-schema')).toEqual(['postgresql']);
    expect(deps('temporal-setup')).toEqual(['temporal']);
  });

  it('publishes only the API, gRPC, Temporal UI and NATS client ports, on loopback by default', () => {
    const all = Object.entries(resolved.services).flatMap(([name, s]) =>
      published(s).map((p) => ({ name, ...p })),
    );
    expect(all.sort((a, b) => a.published - b.published)).toEqual([
      { name: 'nats', hostIp: '127.0.0.1', published: 4222, target: 4222 },
      { name: 'api', hostIp: '127.0.0.1', published: 8080, target: 8080 },
      { name: 'temporal-ui', hostIp: '127.0.0.1', published: 8233, target: 8080 },
      { name: 'api', hostIp: '127.0.0.1', published: 9090, target: 9090 },
    ]);
  });

  it('keeps data in named volumes: PostgreSQL, the JetStream store and the NATS keys', () => {
    const named = Object.keys(resolved.volumes ?? {});
    expect(named).toEqual(expect.arrayContaining(['postgres-data', 'nats-jetstream', 'nats-keys']));
    expect(mountHolding(svc('postgresql'), '/var/lib/postgresql/data')?.source).toBe('postgres-data');
    const storeDir = flag(commandOf(svc('nats-init')), 'store-dir');
    expect(mountHolding(svc('nats'), storeDir)?.source).toBe('nats-jetstream');
    expect(mountHolding(svc('nats-init'), flag(commandOf(svc('nats-init')), 'keys-dir'))?.source).toBe(
      'nats-keys',
    );
  });

  it('gives the API an environment its own loader accepts, with only variables it knows', () => {
    const e = environment(svc('api'));
    const config = loadApiConfig(e);
    expect(Object.keys(e).filter((k) => !(k in apiConfigSchema.shape))).toEqual([]);
    expect(config.AUTH_ISSUER).toBe(REQUIRED.AUTH_ISSUER);
    expect(config.API_HOST).toBe('0.0.0.0');
    expect(config.GRPC_HOST).toBe('0.0.0.0');
    // Its ports are the published targets, and the health check asks this port's /readyz.
    expect(
      published(svc('api'))
        .map((p) => p.target)
        .sort(),
    ).toEqual([config.API_PORT, config.GRPC_PORT].sort());
    expect(JSON.stringify(svc('api').healthcheck?.test)).toContain(`:${config.API_PORT}/readyz`);
    expect(config.TEMPORAL_ADDRESS.split(':')[0]).toBe('temporal');
    expect(new URL(config.NATS_URL).hostname).toBe('nats');
  });

  it('gives the worker an environment its own loader accepts, with only variables it knows', () => {
    const e = environment(svc('worker'));
    const config = loadWorkerConfig(e);
    expect(Object.keys(e).filter((k) => !(k in workerConfigSchema.shape))).toEqual([]);
    expect(config.CHOIROS_SANDBOX_DRIVER).toBe('docker');
    expect(config.TEMPORAL_ADDRESS.split(':')[0]).toBe('temporal');
    expect(new URL(config.NATS_URL).hostname).toBe('nats');
    // A fixed host id: a container's hostname changes when it is recreated, and with it the host queue.
    expect(e.CHOIROS_HOST_ID).toMatch(/^[A-Za-z0-9_-]+$/);
    // The worker image starts FROM the sandbox image it runs sandboxes in (node and git).
    expect(svc('worker').build?.args?.BASE_IMAGE).toBe(config.CHOIROS_SANDBOX_IMAGE);
    expect(svc('sandbox').image).toBe(config.CHOIROS_SANDBOX_IMAGE);
  });

  it('mounts the worker data dir at the same path inside and outside, and the Docker socket', () => {
    const w = svc('worker');
    const dataDir = environment(w).CHOIROS_DATA_DIR ?? '';
    expect(posix.isAbsolute(dataDir)).toBe(true);
    expect(mounts(w)).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ source: dataDir, target: dataDir, readOnly: false }),
        expect.objectContaining({ source: '/var/run/docker.sock', target: '/var/run/docker.sock' }),
      ]),
    );
    // Every host path the worker hands to sandboxes is at its host path (the host engine resolves
    // bind sources). The platform repository is the exception: only the worker's own git reads it
    // (rebuild worktrees live in the data dir), at the fixed path the compose targets file names.
    const platform = mounts(w).find((m) => m.target === '/srv/choiros/platform');
    expect(platform).toMatchObject({ source: ROOT, readOnly: false });
    for (const m of mounts(w).filter((x) => posix.isAbsolute(x.source) && x.target !== platform?.target))
      expect(m.target).toBe(m.source);
  });

  it('wires each service to the NATS files nats-init writes into the volume it shares with it', () => {
    const initArgs = commandOf(svc('nats-init'));
    const shared = (service: string, path: string, dirFlag: string, file: string): void => {
      const m = mountHolding(svc(service), path);
      expect({ service, path, mount: m?.readOnly }).toEqual({ service, path, mount: true });
      expect(posix.basename(path)).toBe(file);
      const initDir = flag(initArgs, dirFlag);
      expect(mountHolding(svc('nats-init'), initDir)?.source).toBe(m?.source);
      expect(posix.dirname(path)).toBe(m?.target);
    };
    const api = environment(svc('api'));
    const worker = environment(svc('worker'));
    shared('api', api.NATS_CREDS ?? '', 'api-dir', NATS_INIT_FILES.apiCreds);
    shared('api', api.NATS_ACCOUNT_SEED_FILE ?? '', 'api-dir', NATS_INIT_FILES.apiAccountSeed);
    shared('worker', worker.NATS_CREDS ?? '', 'worker-dir', NATS_INIT_FILES.workerCreds);
  });

  it('starts nats-server on the config nats-init writes', () => {
    const cmd = commandOf(svc('nats'));
    const configPath = cmd[cmd.indexOf('--config') + 1] ?? '';
    expect(posix.basename(configPath)).toBe(NATS_INIT_FILES.serverConfig);
    const m = mountHolding(svc('nats'), configPath);
    expect(m?.readOnly).toBe(true);
    expect(mountHolding(svc('nats-init'), flag(commandOf(svc('nats-init')), 'server-dir'))?.source).toBe(
      m?.source,
    );
    // The health check asks the monitoring port the config enables.
    const monitorPort = flag(commandOf(svc('nats-init')), 'monitor-port');
    expect(JSON.stringify(svc('nats').healthcheck?.test)).toContain(`127.0.0.1:${monitorPort}/healthz`);
  });

  it('runs the setup jobs from the API image, which carries their scripts', () => {
    const dockerfile = readFileSync(join(ROOT, svc('api').build?.dockerfile ?? ''), 'utf8');
    for (const job of ['nats-init', 'temporal-setup']) {
      expect({ job, image: svc(job).image }).toEqual({ job, image: svc('api').image });
      const script = commandOf(svc(job)).find((a) => a.endsWith('.ts')) ?? '';
      expect({ job, copied: dockerfile.includes(`COPY ${posix.dirname(script)} `) }).toEqual({
        job,
        copied: true,
      });
    }
    const e = environment(svc('temporal-setup'));
    expect(Object.keys(e).filter((k) => !(k in temporalSetupEnvSchema.shape))).toEqual([]);
    expect(temporalSetupEnvSchema.parse(e).TEMPORAL_NAMESPACE).toBe(
      loadApiConfig(environment(svc('api'))).TEMPORAL_NAMESPACE,
    );
  });

  it('refuses to resolve without the secrets it must not default', async () => {
    for (const missing of Object.keys(REQUIRED)) {
      const vars: Record<string, string> = { ...REQUIRED };
      delete vars[missing];
      const { ok, out } = await composeConfig(vars);
      expect({ missing, ok }).toEqual({ missing, ok: false });
      expect(out).toContain(missing);
    }
  });
});

describe('compose one-shot jobs and health checks against real services', () => {
  const tsx = (script: string, args: string[], extraEnv: Record<string, string>) =>
    run(process.execPath, ['--import', 'tsx', script, ...args], {
      cwd: ROOT,
      env: { PATH: process.env.PATH, HOME: process.env.HOME, ...extraEnv },
    });

  describe('nats-init → nats-server', () => {
    let dir: string;
    let server: ManagedProcess | undefined;
    let url: string;
    const conns: NatsConnection[] = [];
    let initArgs: string[];

    beforeAll(async () => {
      dir = await mkdtemp(join(env.workDir(), 'nats-init-'));
      const port = await freePort();
      initArgs = [
        `--keys-dir=${dir}/keys`,
        `--server-dir=${dir}/server`,
        `--api-dir=${dir}/api`,
        `--worker-dir=${dir}/worker`,
        `--store-dir=${dir}/jetstream`,
        '--host=127.0.0.1',
        `--port=${port}`,
        `--monitor-port=${await freePort()}`,
      ];
      await tsx('infra/compose/nats-init.ts', initArgs, {});
      const bin = process.env.CHOIROS_NATS_SERVER_BIN;
      if (!bin) throw new Error('CHOIROS_NATS_SERVER_BIN is not set (source provisioned.env)');
      server = startProcess({
        name: 'nats-compose-test',
        command: bin,
        args: ['-c', join(dir, 'server', NATS_INIT_FILES.serverConfig)],
        logFile: join(dir, 'nats.log'),
      });
      await waitFor('nats-server', () => portOpen('127.0.0.1', port), { timeoutMs: 30_000, proc: server });
      url = `nats://127.0.0.1:${port}`;
    });

    afterAll(async () => {
      for (const c of conns) await c.close().catch(() => undefined);
      await server?.stop();
    });

    const connectWith = async (creds: string | Uint8Array | undefined): Promise<NatsConnection> => {
      const c = await connect({
        servers: url,
        authenticator: creds
          ? credsAuthenticator(typeof creds === 'string' ? await readFile(creds) : creds)
          : undefined,
        reconnect: false,
      });
      conns.push(c);
      return c;
    };

    it('writes an operator-mode config with JetStream', async () => {
      const conf = await readFile(join(dir, 'server', NATS_INIT_FILES.serverConfig), 'utf8');
      expect(conf).toMatch(/^jetstream \{/m);
      expect(conf).toMatch(/^operator: "ey/m);
      expect(conf).toMatch(/^resolver: MEMORY$/m);
    });

    it('refuses anonymous clients', async () => {
      await expect(connectWith(undefined)).rejects.toThrow(/Authorization|AUTHORIZATION/);
    });

    it("lets the worker use JetStream and the API sign users' credentials", async () => {
      const worker = await connectWith(join(dir, 'worker', NATS_INIT_FILES.workerCreds));
      const jsm = await worker.jetstreamManager();
      const stream = `COMPOSE_TEST_${Date.now()}`;
      await jsm.streams.add({ name: stream, subjects: [`choiros.ctest.${stream}.>`] });
      const ack = await worker
        .jetstream()
        .publish(`choiros.ctest.${stream}.run.x.created`, new Uint8Array([1]));
      expect(ack.seq).toBe(1);

      await connectWith(join(dir, 'api', NATS_INIT_FILES.apiCreds)); // the API's own credentials work
      const seed = (await readFile(join(dir, 'api', NATS_INIT_FILES.apiAccountSeed), 'utf8')).trim();
      const user = await mintUserCreds(seed, { tenant: 'acme', userId: 'alice' }, 60);
      const alice = await connectWith(new TextEncoder().encode(user.creds));
      const sub = alice.subscribe('choiros.acme.alice.run.r1.created', { max: 1 });
      await alice.flush();
      worker.publish('choiros.acme.alice.run.r1.created', new Uint8Array([2]));
      for await (const m of sub) expect(m.data).toEqual(new Uint8Array([2]));
      // (What users may not do is covered by nats-permissions.int.test.ts: same account, same minting.)
    });

    it('keeps its keys when run again, so credentials the API issued stay valid', async () => {
      const files = [join(dir, 'keys', 'operator.seed'), join(dir, 'api', NATS_INIT_FILES.apiAccountSeed)];
      const before = await Promise.all(files.map((f) => readFile(f, 'utf8')));
      const { stdout } = await tsx('infra/compose/nats-init.ts', initArgs, {});
      expect(stdout).toContain('"event":"nats.init.done"');
      expect(await Promise.all(files.map((f) => readFile(f, 'utf8')))).toEqual(before);
    });
  });

  it('temporal-setup creates a namespace with every search attribute, and is idempotent', async () => {
    const namespace = `compose-setup-${Date.now()}`;
    const vars = { TEMPORAL_ADDRESS: env.temporalAddress(), TEMPORAL_NAMESPACE: namespace };
    const first = await tsx('infra/compose/temporal-setup.ts', [], vars);
    expect(first.stdout).toContain('"event":"temporal.setup.search_attributes_added"');
    const again = await tsx('infra/compose/temporal-setup.ts', [], vars);
    expect(again.stdout).not.toContain('search_attributes_added');
    expect(again.stdout).toContain('"event":"temporal.setup.done"');
    const conn = await Connection.connect({ address: env.temporalAddress() });
    try {
      const res = await conn.operatorService.listSearchAttributes({ namespace });
      for (const name of SEARCH_ATTRIBUTE_NAMES) {
        expect({ name, type: res.customAttributes?.[name] }).toEqual({
          name,
          type: temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        });
      }
    } finally {
      await conn.close();
    }
  });

  it('worker health check: healthy while this host polls its queues, unhealthy for a host nobody serves', async () => {
    const hostId = `hc-${Date.now()}`;
    const worker = await startTestWorker(hostId);
    const check = async (id: string): Promise<{ code: number; stderr: string }> => {
      try {
        await tsx('worker/healthcheck.ts', [], {
          TEMPORAL_ADDRESS: env.temporalAddress(),
          CHOIROS_HOST_ID: id,
        });
        return { code: 0, stderr: '' };
      } catch (err) {
        const e = err as { code?: number; stderr?: string };
        return { code: e.code ?? -1, stderr: e.stderr ?? '' };
      }
    };
    try {
      // Pollers register once the worker's first long polls reach the server.
      expect(
        (
          await poll(
            () => check(hostId),
            (r) => r.code === 0,
            30_000,
            500,
          )
        ).code,
      ).toBe(0);
      const other = await check(`${hostId}-absent`);
      expect(other.code).toBe(1);
      expect(other.stderr).toContain(`no recent poller`);
      // Egress proxies bind-mount their script from the data dir (the one path a containerised
      // worker shares with the host engine), a copy of this build's script.
      expect(await readFile(join(worker.dataDir, 'egress-proxy', 'proxy.js'), 'utf8')).toBe(
        await readFile(EGRESS_PROXY_SCRIPT, 'utf8'),
      );
    } finally {
      await worker.stop();
    }
  });
});
