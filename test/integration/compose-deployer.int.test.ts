/**
 * The `compose` deployer against a real Docker engine: a small compose-shaped project (containers
 * with compose labels, a project network with service aliases, health checks, volumes) made by
 * the test, its "api" and "worker" replaced one at a time, a broken release rolled back, and the
 * worker that runs the deploy stopping itself only through a retried finalize.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import Docker from 'dockerode';
import type { RebuildTarget } from '../../contracts';
import { rebuildTargetSchema } from '../../contracts';
import {
  COMPOSE_PROJECT_LABEL,
  COMPOSE_SERVICE_LABEL,
  ComposeDeployer,
  PREVIOUS_WORKER_STOPPING,
} from '../../activities/deploy/compose';
import { COMMIT_LABEL } from '../../activities/images/activities';
import type { ServiceDeployInput } from '../../activities/images/types';
import { TEST_SANDBOX_IMAGE } from '../helpers/global-setup';
import { logger, poll } from '../helpers/integration';

const id = `cd${randomUUID().slice(0, 8)}`;
const project = `ct-${id}`;
const network = `${project}_default`;
const volume = `${project}_data`;
const docker = new Docker();
const tags = {
  old: `choiros-ct-${id}:compose`,
  good: `choiros-ct-${id}:good`,
  good2: `choiros-ct-${id}:good2`,
  broken: `choiros-ct-${id}:broken`,
};
const commits = { good: 'a'.repeat(40), good2: 'd'.repeat(40), broken: 'b'.repeat(40) };
const imageIds: Record<keyof typeof tags, string> = { old: '', good: '', good2: '', broken: '' };

/** Builds a tiny image FROM the sandbox test image (no context): `docker build -`. */
function build(tag: string, lines: string[]): string {
  execFileSync('docker', ['build', '-q', '-t', tag, '-'], {
    input: [`FROM ${TEST_SANDBOX_IMAGE}`, ...lines].join('\n'),
  });
  return execFileSync('docker', ['image', 'inspect', '-f', '{{.Id}}', tag]).toString().trim();
}

// PID 1 exits on SIGTERM (a shell ignores it otherwise); healthy once /tmp/ok exists.
const serve =
  'CMD ["sh", "-c", "trap \'exit 0\' TERM; touch /tmp/ok; while true; do sleep 1 & wait $!; done"]';

const target: RebuildTarget = rebuildTargetSchema.parse({
  name: 'ct',
  repo: '/nonexistent',
  deployer: 'compose',
  images: [
    { name: 'api', image: `choiros-ct-${id}`, dockerfile: 'Dockerfile' },
    { name: 'worker', image: `choiros-ct-${id}`, dockerfile: 'Dockerfile' },
  ],
  services: [
    { name: 'api', image: 'api', strategy: 'stop-first', health: { timeoutSeconds: 60 } },
    { name: 'worker', image: 'worker', strategy: 'start-first', health: { timeoutSeconds: 60 } },
  ],
});

function input(
  service: 'api' | 'worker',
  commit: string,
  images: Record<string, string>,
): ServiceDeployInput {
  const spec = target.services.find((s) => s.name === service);
  if (!spec) throw new Error(service);
  return { rebuildId: `rb_ct_${id}`, target, commit, service: spec, images };
}

/** A compose-made container, as docker-compose 1.29 labels and wires it. */
async function composeContainer(service: string): Promise<Docker.Container> {
  const c = await docker.createContainer({
    name: `${project}_${service}_1`,
    Image: tags.old,
    Env: ['SERVICE_SETTING=kept'],
    Labels: {
      [COMPOSE_PROJECT_LABEL]: project,
      [COMPOSE_SERVICE_LABEL]: service,
      'com.docker.compose.container-number': '1',
      'com.docker.compose.oneoff': 'False',
    },
    Healthcheck: { Test: ['CMD', 'test', '-f', '/tmp/ok'], Interval: 1e9, Timeout: 1e9, Retries: 3 },
    StopTimeout: 5,
    HostConfig: {
      Binds: [`${volume}:/data`],
      RestartPolicy: { Name: 'unless-stopped' },
      NetworkMode: network,
      Init: true,
    },
    NetworkingConfig: { EndpointsConfig: { [network]: { Aliases: [service] } } },
  });
  await c.start();
  return c;
}

async function running(service: string): Promise<Docker.ContainerInspectInfo[]> {
  const list = await docker.listContainers({
    all: true,
    filters: { label: [`${COMPOSE_PROJECT_LABEL}=${project}`, `${COMPOSE_SERVICE_LABEL}=${service}`] },
  });
  return Promise.all(list.map((c) => docker.getContainer(c.Id).inspect()));
}

async function current(service: string): Promise<Docker.ContainerInspectInfo> {
  const all = await running(service);
  const c = all.find((x) => !x.Name.endsWith('-prev'));
  if (!c) throw new Error(`no current ${service}`);
  return c;
}

async function removeProject(): Promise<void> {
  const list = await docker.listContainers({
    all: true,
    filters: { label: [`${COMPOSE_PROJECT_LABEL}=${project}`] },
  });
  for (const c of list)
    await docker
      .getContainer(c.Id)
      .remove({ force: true })
      .catch(() => undefined);
}

beforeAll(async () => {
  imageIds.old = build(tags.old, [serve, 'ENV CHOIROS_VERSION=old']);
  imageIds.good = build(tags.good, [
    serve,
    `ENV CHOIROS_VERSION=good`,
    `LABEL ${COMMIT_LABEL}=${commits.good}`,
  ]);
  imageIds.good2 = build(tags.good2, [
    serve,
    `ENV CHOIROS_VERSION=good2`,
    `LABEL ${COMMIT_LABEL}=${commits.good2}`,
  ]);
  imageIds.broken = build(tags.broken, [
    'CMD ["sh", "-c", "echo deliberately broken; exit 3"]',
    `LABEL ${COMMIT_LABEL}=${commits.broken}`,
  ]);
  await docker.createNetwork({ Name: network, Labels: { [COMPOSE_PROJECT_LABEL]: project } });
  await docker.createVolume({ Name: volume });
}, 180_000);

beforeEach(async () => {
  await removeProject();
  await docker.getImage(imageIds.old).tag({ repo: `choiros-ct-${id}`, tag: 'compose' });
  await composeContainer('api');
  await composeContainer('worker');
}, 60_000);

afterAll(async () => {
  await removeProject();
  await docker
    .getNetwork(network)
    .remove()
    .catch(() => undefined);
  await docker
    .getVolume(volume)
    .remove()
    .catch(() => undefined);
  for (const t of Object.values(tags))
    await docker
      .getImage(t)
      .remove({ force: true })
      .catch(() => undefined);
  for (const i of Object.values(imageIds))
    await docker
      .getImage(i)
      .remove({ force: true })
      .catch(() => undefined);
}, 120_000);

describe('compose deployer', () => {
  it('when a release is approved, then api and worker are replaced one at a time on the new image with their compose wiring', async () => {
    const deployer = new ComposeDeployer(docker, logger, { project, selfHostname: 'elsewhere', pollMs: 200 });
    const images = { api: tags.good, worker: tags.good };
    const oldWorker = await current('worker');

    const api = await deployer.deploy(input('api', commits.good, images));
    expect(api).toMatchObject({ service: 'api', changed: true, previousImage: imageIds.old });
    // stop-first: the old api is kept, stopped, as -prev.
    const apiPrev = (await running('api')).find((c) => c.Name.endsWith('-prev'));
    expect(apiPrev?.State.Running).toBe(false);
    expect(await deployer.health(input('api', commits.good, images))).toMatchObject({ healthy: true });

    const newApi = await current('api');
    expect(newApi.Name).toBe(`/${project}_api_1`);
    expect(newApi.Image).toBe(imageIds.good);
    // What the service set survives; what the old image set gives way to the new image's.
    expect(newApi.Config.Env).toEqual(
      expect.arrayContaining(['SERVICE_SETTING=kept', 'CHOIROS_VERSION=good']),
    );
    expect(newApi.Config.Env).not.toContain('CHOIROS_VERSION=old');
    expect(newApi.Config.Labels?.[COMPOSE_SERVICE_LABEL]).toBe('api');
    expect(newApi.NetworkSettings.Networks[network]?.Aliases).toContain('api');
    expect(newApi.Mounts.map((m) => m.Name)).toContain(volume);
    expect(newApi.HostConfig.RestartPolicy?.Name).toBe('unless-stopped');

    // A retried deploy of the same release changes nothing.
    expect(await deployer.deploy(input('api', commits.good, images))).toMatchObject({ changed: false });

    await deployer.deploy(input('worker', commits.good, images));
    // start-first: the old worker keeps running beside the new one.
    const workers = await running('worker');
    expect(workers.map((w) => [w.Name.endsWith('-prev'), w.State.Running]).sort()).toEqual([
      [false, true],
      [true, true],
    ]);
    expect(await deployer.health(input('worker', commits.good, images))).toMatchObject({ healthy: true });

    await deployer.finalize(input('api', commits.good, images));
    expect((await running('api')).map((c) => c.Name)).toEqual([`/${project}_api_1`]);
    // The service's image reference names the new release (a later `docker-compose up` keeps it).
    expect((await docker.getImage(`choiros-ct-${id}:compose`).inspect()).Id).toBe(imageIds.good);

    // The worker running this deploy is the old one: finalize asks it to stop and fails retryably.
    const self = new ComposeDeployer(docker, logger, {
      project,
      selfHostname: oldWorker.Config.Hostname,
      pollMs: 200,
    });
    await expect(self.finalize(input('worker', commits.good, images))).rejects.toMatchObject({
      type: PREVIOUS_WORKER_STOPPING,
      nonRetryable: false,
    });
    await poll(
      async () => (await docker.getContainer(oldWorker.Id).inspect()).State.Running,
      (r) => !r,
      30_000,
    );
    // The retry runs on the new worker: it removes the old container.
    await deployer.finalize(input('worker', commits.good, images));
    const left = await running('worker');
    expect(left.map((c) => [c.Name, c.Image])).toEqual([[`/${project}_worker_1`, imageIds.good]]);
  }, 180_000);

  it('when the second service of a release fails its health check, then both services roll back to the previous images', async () => {
    const deployer = new ComposeDeployer(docker, logger, { project, selfHostname: 'elsewhere', pollMs: 200 });
    const images = { api: tags.good, worker: tags.broken };
    const before = { api: (await current('api')).Image, worker: (await current('worker')).Image };

    const api = await deployer.deploy(input('api', commits.broken, images));
    expect((await deployer.health(input('api', commits.broken, images))).healthy).toBe(true);
    const worker = await deployer.deploy(input('worker', commits.broken, images));
    const h = await deployer.health(input('worker', commits.broken, images));
    expect(h.healthy).toBe(false);
    expect(h.detail).toMatch(/exited with 3|restarted/);

    // The workflow rolls back the last-deployed service first.
    const w = await deployer.rollback(input('worker', commits.broken, images), worker.previousImage);
    expect(w).toEqual({ restoredImage: imageIds.old, healthy: true });
    const a = await deployer.rollback(input('api', commits.broken, images), api.previousImage);
    expect(a).toEqual({ restoredImage: imageIds.old, healthy: true });

    const after = { api: (await current('api')).Image, worker: (await current('worker')).Image };
    expect(after).toEqual(before);
    for (const svc of ['api', 'worker']) {
      const all = await running(svc);
      expect(all.map((c) => [c.Name, c.State.Running])).toEqual([[`/${project}_${svc}_1`, true]]);
    }
    // A retried rollback finds the previous release back and does nothing.
    expect(await deployer.rollback(input('api', commits.broken, images), api.previousImage)).toEqual({
      restoredImage: imageIds.old,
      healthy: true,
    });
    // The image reference still names the previous release.
    expect((await docker.getImage(`choiros-ct-${id}:compose`).inspect()).Id).toBe(imageIds.old);
  }, 180_000);

  it('when a release follows a release, then the compose image reference moves again and the earlier release keeps its own tag', async () => {
    const deployer = new ComposeDeployer(docker, logger, { project, selfHostname: 'elsewhere', pollMs: 200 });
    for (const [commit, tag] of [
      [commits.good, tags.good],
      [commits.good2, tags.good2],
    ] as const) {
      const images = { api: tag, worker: tag };
      await deployer.deploy(input('api', commit, images));
      expect(await deployer.health(input('api', commit, images))).toMatchObject({ healthy: true });
      await deployer.finalize(input('api', commit, images));
    }
    expect((await current('api')).Image).toBe(imageIds.good2);
    expect((await docker.getImage(`choiros-ct-${id}:compose`).inspect()).Id).toBe(imageIds.good2);
    expect((await docker.getImage(tags.good).inspect()).Id).toBe(imageIds.good);
  }, 120_000);

  it('when the project has no container for the service, then the deploy fails with deploy_failed', async () => {
    const deployer = new ComposeDeployer(docker, logger, { project: `${project}-none`, pollMs: 200 });
    await expect(
      deployer.deploy(input('api', commits.good, { api: tags.good, worker: tags.good })),
    ).rejects.toMatchObject({ type: 'deploy_failed', nonRetryable: true });
  });
});
