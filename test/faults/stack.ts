/**
 * The fault suite's own stack: a dockerd of its own (never the shared engine), a Temporal dev
 * server with a SQLite file, NATS with a JetStream store dir and the project's operator-mode auth,
 * the dev issuer, the real API process (api/main.ts) and real worker processes
 * (test/helpers/worker-child.ts: the worker set with a pre-bundled workflow bundle). Every piece can
 * be stopped and started again on the same port / data so a fault can be injected and healed.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import Docker from 'dockerode';
import {
  DEV_AUDIENCE,
  loadOrCreateDevKey,
  mintDevToken,
  serveDevIssuer,
  type DevIssuerKey,
} from '../../infra/dev-issuer/issuer';
import { startNatsServer, type NatsServer } from '../../infra/stack/nats';
import { tmpdir } from 'node:os';
import { freePort, startEntry, startProcess, waitFor, type ManagedProcess } from '../../infra/stack/process';
import { writeTenantsFile } from '../../tenancy';
import { SCENARIOS } from './scenarios';
import { ensureSandboxImage } from '../../infra/stack/sandbox-image';
import { startTemporalDevServer, type TemporalDevServer } from '../../infra/stack/temporal';
import { bundleWorkflows } from '../../worker/bundle';
import { DelayProxy } from './delay-proxy';

const execFileAsync = promisify(execFile);
/** The suite engine's default bridge (a link the suite creates and deletes), and its address. */
const FAULTS_BRIDGE = 'choiros-flt0';
const FAULTS_BRIDGE_CIDR = '10.231.0.1/24';
/**
 * NATS runs in a network namespace of the suite's own, reached over a veth pair on a private /30,
 * so `nats-partition` can drop its packets (iptables inside that namespace) without closing a
 * connection. Nothing else is routed there; the host's own firewall is never touched.
 */
const NATS_NETNS = 'choiros-flt-nats';
const NATS_VETH_HOST = 'choiros-fltn0';
const NATS_VETH_NS = 'choiros-fltn1';
const NATS_HOST_CIDR = '10.231.1.1/30';
const NATS_NS_IP = '10.231.1.2';

export const ROOT = resolve(__dirname, '../..');
export const FAULTS_IMAGE = 'choiros-sandbox:faults';

export interface StackOptions {
  /** Scratch dir of this suite run: logs, SQLite file, NATS store, worker data, repos. */
  workDir: string;
  /** data-root of the suite's own dockerd (kept between suite runs so the image build is cached). */
  dockerDataRoot: string;
  /** exec-root of the suite's own dockerd; its socket and managed containerd live here. */
  dockerExecRoot: string;
  temporalBin: string;
  natsBin: string;
  busybox: string;
  log: (line: string) => void;
}

function need<T>(v: T | undefined, what: string): T {
  if (v === undefined) throw new Error(`${what} is not running`);
  return v;
}

export class FaultStack {
  readonly logDir: string;
  readonly dataDir: string;
  readonly dockerSocket: string;
  readonly docker: Docker;
  private dockerd?: ManagedProcess;
  private temporal?: TemporalDevServer;
  private nats?: NatsServer;
  private api?: ManagedProcess;
  private workers: ManagedProcess[] = [];
  private workerCount = 0;
  private issuerKey?: DevIssuerKey;
  private issuerUrl?: string;
  private closeIssuer?: () => Promise<void>;
  private bundleFile?: string;
  private imageId?: string;
  private temporalPort = 0;
  /** The API and workers reach Temporal through this (the `temporal-slow` fault sets its delay). */
  temporalProxy?: DelayProxy;
  private temporalProxyPort = 0;
  private natsPort = 0;
  /** Whether NATS's namespace drops every packet now (nats-partition). */
  private natsPartitioned = false;
  apiUrl = '';
  /** The small filesystem mounted over the worker's data dir (disk-full), while it is. */
  private dataDisk?: string;

  constructor(private readonly opts: StackOptions) {
    this.logDir = join(opts.workDir, 'logs');
    this.dataDir = join(opts.workDir, 'worker-data');
    this.dockerSocket = join(opts.dockerExecRoot, 'docker.sock');
    this.docker = new Docker({ socketPath: this.dockerSocket });
  }

  get dockerHost(): string {
    return `unix://${this.dockerSocket}`;
  }

  get natsServer(): NatsServer {
    return need(this.nats, 'NATS');
  }

  get temporalAddress(): string {
    return need(this.temporal, 'Temporal').address;
  }

  get worktreeRoot(): string {
    return join(this.dataDir, 'worktrees');
  }

  /** Starts everything, in dependency order. */
  async start(): Promise<void> {
    await mkdir(this.logDir, { recursive: true });
    await mkdir(this.dataDir, { recursive: true });
    await this.startDockerd();
    // The engine is the suite's own: whatever an interrupted earlier suite run left on it goes.
    const left = await this.docker.listContainers({
      all: true,
      filters: { label: ['choiros.managed=true'] },
    });
    for (const c of left) await this.docker.getContainer(c.Id).remove({ force: true });
    if (left.length > 0)
      this.opts.log(`removed ${left.length} container(s) an earlier suite run left behind`);
    const img = await ensureSandboxImage({
      docker: this.docker,
      repoRoot: ROOT,
      busybox: this.opts.busybox,
      image: FAULTS_IMAGE,
      log: (l) => this.opts.log(`  image: ${l}`),
    });
    this.imageId = img.id;
    this.opts.log(`sandbox image ${img.image} ${img.built ? 'built' : 'ready'} on the suite's dockerd`);
    this.temporalPort = await freePort();
    await this.startTemporal();
    this.temporalProxy = new DelayProxy('127.0.0.1', this.temporalPort);
    this.temporalProxyPort = await this.temporalProxy.listen(0);
    this.natsPort = await freePort();
    await this.ensureNatsNetns();
    await this.startNats();
    const key = await loadOrCreateDevKey(join(this.opts.workDir, 'issuer'));
    const issuer = await serveDevIssuer({ key, host: '127.0.0.1', port: 0 });
    this.issuerKey = key;
    this.issuerUrl = issuer.issuer;
    this.closeIssuer = issuer.close;
    this.opts.log('bundling workflows for the worker processes');
    // The production bundle (with the tracing interceptor modules), as workers build it.
    const bundle = await bundleWorkflows();
    this.bundleFile = join(this.opts.workDir, 'workflow-bundle.js');
    await writeFile(this.bundleFile, bundle.code);
    await writeFile(`${this.bundleFile}.map`, bundle.sourceMap);
    await this.startWorker();
    await this.startApi();
  }

  /** Stops everything it started, in reverse order; never throws. */
  async stop(): Promise<void> {
    await this.api?.stop().catch(() => undefined);
    for (const w of this.workers) await w.stop().catch(() => undefined);
    await this.closeIssuer?.().catch(() => undefined);
    await this.temporalProxy?.close().catch(() => undefined);
    await this.nats?.process.stop().catch(() => undefined);
    await this.temporal?.process.stop().catch(() => undefined);
    await this.unmountDataDisk().catch(() => undefined);
    await this.dockerd?.stop(30_000).catch(() => undefined);
    await execFileAsync('ip', ['link', 'del', FAULTS_BRIDGE]).catch(() => undefined);
    await this.removeNatsNetns();
  }

  /** NATS's namespace and the veth pair to it (10.231.1.1 here, 10.231.1.2 there), made fresh. */
  private async ensureNatsNetns(): Promise<void> {
    await this.removeNatsNetns(); // an interrupted earlier suite run's
    const ip = (...args: string[]) => execFileAsync('ip', args);
    const inNs = (...args: string[]) => execFileAsync('ip', ['netns', 'exec', NATS_NETNS, ...args]);
    await ip('netns', 'add', NATS_NETNS);
    await ip('link', 'add', NATS_VETH_HOST, 'type', 'veth', 'peer', 'name', NATS_VETH_NS);
    await ip('link', 'set', NATS_VETH_NS, 'netns', NATS_NETNS);
    await ip('addr', 'add', NATS_HOST_CIDR, 'dev', NATS_VETH_HOST);
    await ip('link', 'set', NATS_VETH_HOST, 'up');
    await inNs('ip', 'addr', 'add', `${NATS_NS_IP}/30`, 'dev', NATS_VETH_NS);
    await inNs('ip', 'link', 'set', NATS_VETH_NS, 'up');
    await inNs('ip', 'link', 'set', 'lo', 'up');
  }

  /** Deletes NATS's namespace (its end of the veth pair, and so the pair, goes with it). */
  private async removeNatsNetns(): Promise<void> {
    await execFileAsync('ip', ['netns', 'del', NATS_NETNS]).catch(() => undefined);
    await execFileAsync('ip', ['link', 'del', NATS_VETH_HOST]).catch(() => undefined);
  }

  /**
   * Drops every packet into and out of NATS's namespace (`on`), or stops dropping: connections stay
   * open, nothing is answered, nothing is refused. Rules live in that namespace only.
   */
  async partitionNats(on: boolean): Promise<void> {
    if (on === this.natsPartitioned) return;
    for (const chain of ['INPUT', 'OUTPUT']) {
      await execFileAsync('ip', [
        'netns',
        'exec',
        NATS_NETNS,
        'iptables',
        '-w',
        on ? '-A' : '-D',
        chain,
        '-j',
        'DROP',
      ]);
    }
    this.natsPartitioned = on;
  }

  /**
   * Mounts a fresh `sizeMb` ext4 filesystem (an image file in the work dir, no blocks reserved for
   * root: the worker is root) over the worker's data dir, hiding what is there until it is unmounted.
   * Stop the worker first: a running one holds files of the dir it hides.
   */
  async mountDataDisk(sizeMb: number): Promise<void> {
    if (this.dataDisk) throw new Error('the data disk is already mounted');
    const image = join(this.opts.workDir, 'data-disk.img');
    await rm(image, { force: true });
    await execFileAsync('truncate', ['-s', `${sizeMb}M`, image]);
    await execFileAsync('mkfs.ext4', ['-q', '-F', '-m', '0', '--', image]);
    await execFileAsync('mount', ['-o', 'loop,nodev,nosuid', '--', image, this.dataDir]);
    this.dataDisk = image;
    this.opts.log(`mounted a ${sizeMb} MiB ext4 filesystem over the worker's data dir`);
  }

  /** Unmounts the data disk (lazily when still busy) and deletes its image; nothing when none is mounted. */
  async unmountDataDisk(): Promise<void> {
    const image = this.dataDisk;
    if (!image) return;
    // Run trees are loop mounts of their own inside it: they go first.
    const mounts = (await readFile('/proc/self/mountinfo', 'utf8'))
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '')
      .filter((m) => m.startsWith(`${this.dataDir}/`))
      .reverse();
    for (const m of mounts) await execFileAsync('umount', ['-l', '--', m]).catch(() => undefined);
    await execFileAsync('umount', ['--', this.dataDir]).catch(() =>
      execFileAsync('umount', ['-l', '--', this.dataDir]),
    );
    this.dataDisk = undefined;
    await rm(image, { force: true });
  }

  /**
   * The suite engine's own bridge interface. dockerd needs a default bridge it may own: with
   * `--bridge=none` it deletes the host's `docker0` at start (moby removes the default bridge
   * interface when the bridge is disabled), which breaks the shared engine's containers.
   */
  private async ensureBridge(): Promise<void> {
    const exists = await execFileAsync('ip', ['link', 'show', FAULTS_BRIDGE]).then(
      () => true,
      () => false,
    );
    if (exists) return;
    await execFileAsync('ip', ['link', 'add', 'name', FAULTS_BRIDGE, 'type', 'bridge']);
    await execFileAsync('ip', ['addr', 'add', FAULTS_BRIDGE_CIDR, 'dev', FAULTS_BRIDGE]);
    await execFileAsync('ip', ['link', 'set', FAULTS_BRIDGE, 'up']);
  }

  async startDockerd(): Promise<void> {
    const dockerd = ['/usr/sbin/dockerd', '/usr/bin/dockerd', '/usr/local/bin/dockerd'].find((p) =>
      existsSync(p),
    );
    if (!dockerd) throw new Error('the fault suite needs dockerd (apt-get install docker.io)');
    if (process.getuid?.() !== 0)
      throw new Error('the fault suite starts its own dockerd and must run as root');
    await mkdir(this.opts.dockerDataRoot, { recursive: true });
    await mkdir(this.opts.dockerExecRoot, { recursive: true });
    await this.ensureBridge();
    if (
      await this.docker.ping().then(
        () => true,
        () => false,
      )
    ) {
      throw new Error(
        `a dockerd already answers on ${this.dockerSocket} (left behind by an earlier suite run?); stop it first`,
      );
    }
    // Coexists with the shared engine: its own data root, exec root (socket, managed containerd,
    // netns), pid file, its own default bridge (never docker0) and no iptables rules (sandboxes
    // have no network).
    this.dockerd = startProcess({
      name: 'dockerd',
      command: dockerd,
      args: [
        '--data-root',
        this.opts.dockerDataRoot,
        '--exec-root',
        this.opts.dockerExecRoot,
        '--pidfile',
        join(this.opts.dockerExecRoot, 'dockerd.pid'),
        '-H',
        this.dockerHost,
        `--bridge=${FAULTS_BRIDGE}`,
        '--iptables=false',
        '--ip6tables=false',
        '--shutdown-timeout',
        '5',
      ],
      logFile: join(this.logDir, 'dockerd.log'),
    });
    const proc = this.dockerd;
    await waitFor('the suite dockerd', () => this.docker.ping().then(() => true), {
      timeoutMs: 60_000,
      proc,
    });
  }

  async stopDockerd(): Promise<void> {
    await need(this.dockerd, 'dockerd').stop(60_000);
    this.dockerd = undefined;
  }

  async startTemporal(): Promise<void> {
    this.temporal = await startTemporalDevServer({
      binary: this.opts.temporalBin,
      host: '127.0.0.1',
      port: this.temporalPort,
      dbFile: join(this.opts.workDir, 'temporal.db'),
      logDir: this.logDir,
      namespace: 'default',
    });
  }

  /** What the API and workers dial: the delay proxy in front of Temporal. */
  private clientTemporalAddress(temporal: TemporalDevServer): string {
    return this.temporalProxyPort ? `127.0.0.1:${this.temporalProxyPort}` : temporal.address;
  }

  async stopTemporal(): Promise<void> {
    await need(this.temporal, 'Temporal').process.stop();
    this.temporal = undefined;
  }

  async startNats(): Promise<void> {
    // nats-server started inside its namespace (exec, so the managed pid is the server's own).
    const wrapper = join(this.opts.workDir, 'nats-in-netns.sh');
    await writeFile(
      wrapper,
      `#!/bin/sh\nexec ip netns exec ${NATS_NETNS} ${JSON.stringify(this.opts.natsBin)} "$@"\n`,
      { mode: 0o755 },
    );
    this.nats = await startNatsServer({
      binary: wrapper,
      host: NATS_NS_IP,
      port: this.natsPort,
      dir: join(this.opts.workDir, 'nats'),
      logDir: this.logDir,
    });
  }

  async stopNats(): Promise<void> {
    await need(this.nats, 'NATS').process.stop();
    this.nats = undefined;
  }

  /** Every scenario's tenant, its repositories (made under the system temp dir) granted; one file for API and workers. */
  private async tenantsFile(): Promise<string> {
    return writeTenantsFile(
      join(this.logDir, '..', 'tenants.yaml'),
      SCENARIOS.map((s) => `faults-${s.name}`),
      [`${tmpdir()}/`, `file://${tmpdir()}/`],
    );
  }

  /** A worker process on host `faults-host` (the same host id and data dir for every replacement). */
  async startWorker(extraEnv: Record<string, string> = {}): Promise<ManagedProcess> {
    this.workerCount += 1;
    const temporal = need(this.temporal, 'Temporal');
    const nats = need(this.nats, 'NATS');
    const logFile = join(this.logDir, `worker-${this.workerCount}.log`);
    const proc = startEntry({
      name: `worker-${this.workerCount}`,
      entry: 'test/helpers/worker-child.ts',
      logFile,
      env: {
        ...process.env,
        DOCKER_HOST: this.dockerHost,
        CHOIROS_CHILD_BUNDLE: need(this.bundleFile, 'the workflow bundle'),
        TEMPORAL_ADDRESS: this.clientTemporalAddress(temporal),
        NATS_URL: nats.url,
        NATS_CREDS: nats.workerCredsFile,
        CHOIROS_DATA_DIR: this.dataDir,
        CHOIROS_VERIFIERS_FILE: join(ROOT, 'test/fixtures/verifiers.yaml'),
        CHOIROS_SANDBOX_IMAGE: need(this.imageId, 'the sandbox image'),
        CHOIROS_HOST_ID: 'faults-host',
        // The worker re-checks repository grants with the API's tenants file.
        CHOIROS_TENANTS_FILE: await this.tenantsFile(),
        // Off: the suite checks that runs clean up after themselves, not that the sweeper does.
        CHOIROS_SWEEP_INTERVAL_SECONDS: '0',
        CHOIROS_MAX_RUNS_PER_USER: '16',
        // A replacement may start before the killed worker's port is free: no metrics endpoint.
        CHOIROS_METRICS_PORT: '0',
        LOG_LEVEL: 'warn',
        ...extraEnv,
      },
    });
    this.workers.push(proc);
    await waitFor('worker process', async () => (await readFile(logFile, 'utf8')).includes('READY'), {
      timeoutMs: 120_000,
      proc,
    });
    return proc;
  }

  /** Stops the newest worker the way an operator does (SIGTERM: it drains, then exits). */
  async stopWorker(): Promise<void> {
    const w = this.workers.pop();
    if (!w) throw new Error('no worker to stop');
    await w.stop(60_000);
  }

  /** SIGKILLs the worker process group (no drain, no cleanup: a crashed host process). */
  async killWorker(): Promise<void> {
    const w = this.workers.pop();
    if (!w) throw new Error('no worker to kill');
    try {
      process.kill(-w.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
    await w.exited;
  }

  async startApi(): Promise<void> {
    const temporal = need(this.temporal, 'Temporal');
    const nats = need(this.nats, 'NATS');
    const port = await freePort();
    const tenantsFile = await this.tenantsFile();
    this.api = startEntry({
      name: 'api',
      entry: 'api/main.ts',
      logFile: join(this.logDir, 'api.log'),
      env: {
        ...process.env,
        TEMPORAL_ADDRESS: this.clientTemporalAddress(temporal),
        NATS_URL: nats.url,
        NATS_CREDS: nats.apiCredsFile,
        NATS_ACCOUNT_SEED_FILE: nats.accountSeedFile,
        AUTH_ISSUER: need(this.issuerUrl, 'the dev issuer'),
        AUTH_AUDIENCE: DEV_AUDIENCE,
        AUTH_ALGORITHMS: 'ES256',
        API_HOST: '127.0.0.1',
        API_PORT: String(port),
        GRPC_PORT: '0',
        // The suite polls many runs from one principal, like a dashboard would.
        API_RATE_LIMIT_PER_MINUTE: '0',
        CHOIROS_VERIFIERS_FILE: join(ROOT, 'test/fixtures/verifiers.yaml'),
        CHOIROS_TENANTS_FILE: tenantsFile,
        CHOIROS_DATA_DIR: this.dataDir,
        LOG_LEVEL: 'warn',
      },
    });
    this.apiUrl = `http://127.0.0.1:${port}`;
    const proc = this.api;
    await waitFor(
      'API readiness',
      async () => (await fetch(`${this.apiUrl}/readyz`, { signal: AbortSignal.timeout(2000) })).ok,
      { timeoutMs: 120_000, proc },
    );
  }

  /** A token of `sub` in `tenant`, signed by the dev issuer the API trusts. */
  token(sub: string, tenant: string): Promise<string> {
    const issuer = need(this.issuerUrl, 'the dev issuer');
    return mintDevToken(
      need(this.issuerKey, 'the dev issuer key'),
      { issuer, audience: DEV_AUDIENCE },
      { sub, tenant, ttlSeconds: 3 * 3600 },
    );
  }
}
