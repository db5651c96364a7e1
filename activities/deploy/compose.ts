/**
 * The `compose` deployer: replaces the api and worker of the docker-compose project this worker
 * runs in with a rebuild's images, one service at a time, health-checked by the service's own
 * compose health check, rolled back on failure. The new container is a copy of the running one
 * (name, compose labels, volumes, networks and aliases, ports, environment, restart policy) on the
 * new image, so `docker-compose ps/logs/down` keep treating it as the service's container.
 *
 * - `stop-first` (a service with published ports, the api): the old container is stopped and kept
 *   as `<name>-prev`; the new one starts under the old name.
 * - `start-first` (the worker, which may be running this very activity): the old container keeps
 *   running as `<name>-prev` beside the new one until every service is healthy; `finalize` then
 *   stops it. When it is this process's own container, `finalize` sends it SIGTERM (it drains) and
 *   fails the attempt as retryable, so the retry runs on the new worker, which waits for the old
 *   one to exit and removes it.
 *
 * The engine is the record: labels say which commit a container runs and what ran before, so a
 * retried or resumed deploy finds its own work and does nothing twice.
 */
import { hostname } from 'node:os';
import { ApplicationFailure } from '@temporalio/common';
import type Docker from 'dockerode';
import type { Logger } from 'pino';
import { COMMIT_LABEL, TARGET_LABEL } from '../images/activities';
import type { HealthResult, ServiceDeployInput } from '../images/types';
import type { Deployer } from './deployer';
import { PREVIOUS_IMAGE_LABEL, REBUILD_LABEL } from './docker';

export const COMPOSE_PROJECT_LABEL = 'com.docker.compose.project';
export const COMPOSE_SERVICE_LABEL = 'com.docker.compose.service';
/** The image reference the compose file gives the service (e.g. `choiros-api:compose`), kept on each copy. */
export const COMPOSE_IMAGE_LABEL = 'choiros.deploy.compose-image';
/** The failure type of the finalize attempt that asked its own container to stop (retried elsewhere). */
export const PREVIOUS_WORKER_STOPPING = 'previous_worker_stopping';

export interface ComposeDeployerOptions {
  /** The compose project; default: the project of the container this process runs in. */
  project?: string;
  /** This process's container (its hostname unless the compose file sets one). */
  selfHostname?: string;
  /** How often the container's health is read. */
  pollMs?: number;
}

/** Run settings the inspect type leaves out. */
type RunConfig = Docker.ContainerInspectInfo['Config'] & { StopSignal?: string; StopTimeout?: number };

function statusOf(err: unknown): number | undefined {
  return (err as { statusCode?: number })?.statusCode;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function deployFailed(message: string): ApplicationFailure {
  return ApplicationFailure.create({ type: 'deploy_failed', message, nonRetryable: true });
}

/**
 * What the container set itself, apart from what its image gave it: environment entries, labels
 * and run settings equal to the old image's are left out so the new image's own apply (its
 * `CHOIROS_VERSION`, `CMD`, labels).
 */
export function cloneSpec(
  c: Docker.ContainerInspectInfo,
  oldImage: Docker.ImageInspectInfo | undefined,
  image: string,
  labels: Record<string, string>,
): { spec: Docker.ContainerCreateOptions; extraNetworks: [string, Docker.EndpointSettings][] } {
  const imageEnv = new Set(oldImage?.Config?.Env ?? []);
  const imageLabels = oldImage?.Config?.Labels ?? {};
  const ownLabels = Object.fromEntries(
    Object.entries(c.Config.Labels ?? {}).filter(
      ([k, v]) => imageLabels[k] !== v && k !== PREVIOUS_IMAGE_LABEL && k !== REBUILD_LABEL,
    ),
  );
  const same = (a: unknown, b: unknown): boolean => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
  const ic = oldImage?.Config;
  const run: RunConfig = c.Config;
  const networks = c.NetworkSettings?.Networks ?? {};
  const shortId = c.Id.slice(0, 12);
  const endpoints = Object.fromEntries(
    Object.entries(networks).map(([name, n]) => [
      name,
      // The old container's own id alias stays with it; the service aliases move.
      { Aliases: ((n.Aliases ?? []) as string[]).filter((a) => a !== shortId && a !== c.Id) },
    ]),
  );
  const [first, ...rest] = Object.keys(endpoints);
  const spec: Docker.ContainerCreateOptions = {
    name: c.Name.replace(/^\//, ''),
    Image: image,
    Env: (c.Config.Env ?? []).filter((e) => !imageEnv.has(e)),
    Labels: { ...ownLabels, ...labels },
    ...(c.Config.User && c.Config.User !== ic?.User ? { User: c.Config.User } : {}),
    ...(c.Config.WorkingDir && c.Config.WorkingDir !== ic?.WorkingDir
      ? { WorkingDir: c.Config.WorkingDir }
      : {}),
    ...(!same(c.Config.Cmd, ic?.Cmd) ? { Cmd: c.Config.Cmd } : {}),
    ...(!same(c.Config.Entrypoint, ic?.Entrypoint) ? { Entrypoint: c.Config.Entrypoint } : {}),
    ...(c.Config.Healthcheck && !same(c.Config.Healthcheck, ic?.Healthcheck)
      ? { Healthcheck: c.Config.Healthcheck }
      : {}),
    ...(c.Config.ExposedPorts ? { ExposedPorts: c.Config.ExposedPorts } : {}),
    ...(run.StopSignal ? { StopSignal: run.StopSignal } : {}),
    ...(run.StopTimeout !== undefined ? { StopTimeout: run.StopTimeout } : {}),
    HostConfig: c.HostConfig,
    // The engine attaches one network at create; the others are connected before start.
    ...(first ? { NetworkingConfig: { EndpointsConfig: { [first]: endpoints[first] ?? {} } } } : {}),
  };
  return { spec, extraNetworks: rest.map((n) => [n, endpoints[n] ?? {}]) };
}

export class ComposeDeployer implements Deployer {
  private readonly pollMs: number;
  private readonly self: string;
  private projectName: string | undefined;

  constructor(
    private readonly docker: Docker,
    private readonly logger: Logger,
    opts: ComposeDeployerOptions = {},
  ) {
    this.pollMs = opts.pollMs ?? 1000;
    this.self = opts.selfHostname ?? hostname();
    this.projectName = opts.project;
  }

  private async inspect(name: string): Promise<Docker.ContainerInspectInfo | undefined> {
    try {
      return await this.docker.getContainer(name).inspect();
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw err;
    }
  }

  private async project(): Promise<string> {
    if (this.projectName) return this.projectName;
    const me = await this.inspect(this.self);
    const p = me?.Config.Labels?.[COMPOSE_PROJECT_LABEL];
    if (!p)
      throw deployFailed(
        `the compose deployer runs only in a worker of a compose project: container ${this.self} has no ${COMPOSE_PROJECT_LABEL} label`,
      );
    this.projectName = p;
    return p;
  }

  /** The service's current container (not `-prev`) and its kept predecessor, by compose labels. */
  private async containers(service: string): Promise<{
    current?: Docker.ContainerInspectInfo;
    prev?: Docker.ContainerInspectInfo;
  }> {
    const project = await this.project();
    const list = await this.docker.listContainers({
      all: true,
      filters: { label: [`${COMPOSE_PROJECT_LABEL}=${project}`, `${COMPOSE_SERVICE_LABEL}=${service}`] },
    });
    const names = list.flatMap((c) => (c.Names ?? []).map((n) => n.replace(/^\//, '')));
    if (names.filter((n) => !n.endsWith('-prev')).length > 1)
      throw deployFailed(
        `compose service ${service} of project ${project} has ${names.length} containers; the compose deployer replaces one (scale it to 1 first)`,
      );
    const prevName = names.find((n) => n.endsWith('-prev'));
    const currentName = names.find((n) => !n.endsWith('-prev')) ?? prevName?.replace(/-prev$/, '');
    const current = currentName ? await this.inspect(currentName) : undefined;
    const prev = await this.inspect(`${currentName ?? service}-prev`);
    return { ...(current ? { current } : {}), ...(prev ? { prev } : {}) };
  }

  private async remove(name: string): Promise<void> {
    await this.docker
      .getContainer(name)
      .remove({ force: true })
      .catch((err: unknown) => {
        if (statusOf(err) !== 404) throw err;
      });
  }

  private async stop(c: Docker.ContainerInspectInfo): Promise<void> {
    const grace = (c.Config as RunConfig).StopTimeout ?? 10;
    await this.docker
      .getContainer(c.Id)
      .stop({ t: grace })
      .catch((err: unknown) => {
        const code = statusOf(err);
        if (code !== 304 && code !== 404) throw err; // 304: already stopped
      });
  }

  private async imageOrUndefined(ref: string): Promise<Docker.ImageInspectInfo | undefined> {
    try {
      return await this.docker.getImage(ref).inspect();
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw err;
    }
  }

  /** Creates and starts a copy of `template` on `image`, under the template's name without `-prev`. */
  private async startCopy(
    input: ServiceDeployInput,
    template: Docker.ContainerInspectInfo,
    image: string,
    labels: Record<string, string>,
  ): Promise<void> {
    const oldImage = await this.imageOrUndefined(template.Image);
    const { spec, extraNetworks: extra } = cloneSpec(template, oldImage, image, {
      [TARGET_LABEL]: input.target.name,
      ...labels,
    });
    spec.name = (spec.name ?? input.service.name).replace(/-prev$/, '');
    const created = await this.docker.createContainer(spec);
    for (const [net, endpoint] of extra)
      await this.docker.getNetwork(net).connect({ Container: created.id, EndpointConfig: endpoint });
    await created.start();
  }

  async deploy(input: ServiceDeployInput) {
    const s = input.service;
    const image = input.images[s.image];
    if (!image) throw deployFailed(`service ${s.name}: no built image ${s.image}`);
    const { current, prev } = await this.containers(s.name);
    if (current?.Config.Labels?.[COMMIT_LABEL] === input.commit && current.Config.Labels?.[REBUILD_LABEL]) {
      // Already deployed by an earlier attempt of this (or an identical) release.
      if (!current.State.Running) await this.docker.getContainer(current.Id).start();
      return {
        service: s.name,
        image,
        previousImage: current.Config.Labels?.[PREVIOUS_IMAGE_LABEL] ?? null,
        changed: false,
      };
    }
    const template = current ?? prev;
    if (!template)
      throw deployFailed(
        `compose project ${await this.project()} has no container for service ${s.name} (is the stack up?)`,
      );
    // The previous image is what ran before this release: the kept container's when a crash left
    // one behind without a current container, else the current one's.
    const previousImage = template.Image;
    if (current) {
      if (prev) await this.remove(prev.Id);
      if (s.strategy === 'stop-first') await this.stop(current);
      await this.docker.getContainer(current.Id).rename({ name: `${current.Name.replace(/^\//, '')}-prev` });
    }
    await this.startCopy(input, template, image, {
      [COMMIT_LABEL]: input.commit,
      [REBUILD_LABEL]: input.rebuildId,
      [PREVIOUS_IMAGE_LABEL]: previousImage,
      [COMPOSE_IMAGE_LABEL]: template.Config.Labels?.[COMPOSE_IMAGE_LABEL] ?? template.Config.Image,
    });
    this.logger.info(
      { event: 'rebuild.deploy.replaced', rebuildId: input.rebuildId, service: s.name, image, previousImage },
      'compose service replaced',
    );
    return { service: s.name, image, previousImage, changed: true };
  }

  /**
   * Healthy when the new container's compose health check reports `healthy` (or, without one, it
   * keeps running for `stableSeconds`); unhealthy at once when it exits or restarts, else when
   * `timeoutSeconds` pass.
   */
  async health(input: ServiceDeployInput, signal?: AbortSignal): Promise<HealthResult> {
    const s = input.service;
    const started = Date.now();
    const until = started + s.health.timeoutSeconds * 1000;
    let detail = 'no container';
    while (Date.now() < until && !signal?.aborted) {
      const { current } = await this.containers(s.name);
      const took = (): number => Date.now() - started;
      if (!current) detail = 'the service has no container';
      else if (current.Config.Labels?.[COMMIT_LABEL] !== input.commit)
        return { healthy: false, detail: 'another release replaced the container', durationMs: took() };
      else if (!current.State.Running || current.RestartCount > 0)
        return {
          healthy: false,
          detail: `container exited with ${current.State.ExitCode} (restarted ${current.RestartCount} times)`,
          durationMs: took(),
        };
      else {
        const h = current.State.Health;
        const last = h?.Log?.[h.Log.length - 1];
        detail = h
          ? `health ${h.Status}${last ? `; last check exit ${last.ExitCode}: ${last.Output.trim().slice(0, 200)}` : ''}`
          : 'running (no health check)';
        if (h?.Status === 'healthy')
          return { healthy: true, detail: `healthy on ${input.commit.slice(0, 12)}`, durationMs: took() };
        if (h?.Status === 'unhealthy') return { healthy: false, detail, durationMs: took() };
        if (!h && took() >= s.health.stableSeconds * 1000)
          return { healthy: true, detail: `running for ${s.health.stableSeconds}s`, durationMs: took() };
      }
      await sleep(this.pollMs);
    }
    return {
      healthy: false,
      detail: `not healthy within ${s.health.timeoutSeconds}s: ${detail}`,
      durationMs: Date.now() - started,
    };
  }

  async rollback(input: ServiceDeployInput, previousImage: string | null) {
    const s = input.service;
    const { current, prev } = await this.containers(s.name);
    let restored: string | null = null;
    if (prev) {
      if (current) await this.remove(current.Id);
      await this.docker
        .getContainer(prev.Id)
        .rename({ name: prev.Name.replace(/^\//, '').replace(/-prev$/, '') });
      if (!prev.State.Running) await this.docker.getContainer(prev.Id).start();
      restored = prev.Image;
    } else if (current && current.Config.Labels?.[COMMIT_LABEL] !== input.commit) {
      // A retried rollback: the previous release is back already.
      restored = current.Image;
    } else if (current && previousImage) {
      // The kept container is gone: a copy of the current one on the previous image.
      await this.remove(current.Id);
      await this.startCopy(input, current, previousImage, {});
      restored = previousImage;
    }
    if (!restored) return { restoredImage: null, healthy: false };
    const h = await this.waitRestored(s.name, s.health.timeoutSeconds * 1000);
    this.logger.warn(
      { event: 'rebuild.rollback', rebuildId: input.rebuildId, service: s.name, restored, healthy: h },
      'compose service rolled back',
    );
    return { restoredImage: restored, healthy: h };
  }

  /** The restored container answers its health check (or runs, without one). */
  private async waitRestored(service: string, timeoutMs: number): Promise<boolean> {
    const until = Date.now() + timeoutMs;
    while (Date.now() < until) {
      const { current } = await this.containers(service);
      const h = current?.State.Health?.Status;
      if (current?.State.Running && (h === undefined || h === 'healthy')) return true;
      await sleep(this.pollMs);
    }
    return false;
  }

  async finalize(input: ServiceDeployInput) {
    const s = input.service;
    const { current, prev } = await this.containers(s.name);
    if (!prev) return; // finalized already (a retry on the new worker after the old one stopped)
    // First, so that a later `docker-compose up` keeps this release: the service's image
    // reference in the compose file (e.g. choiros-api:compose) now names the new image.
    const image = input.images[s.image];
    const ref = current?.Config.Labels?.[COMPOSE_IMAGE_LABEL] ?? '';
    const colon = ref.lastIndexOf(':');
    if (image && colon > 0 && !ref.startsWith('sha256:') && !ref.includes('@') && ref !== image)
      await this.docker.getImage(image).tag({ repo: ref.slice(0, colon), tag: ref.slice(colon + 1) });
    if (prev.State.Running && prev.Config.Hostname === this.self) {
      // This process runs in the old container: ask it to drain and exit, and let the retry of
      // this attempt (on the new worker, once this one stops polling) remove it.
      await this.docker.getContainer(prev.Id).kill({ signal: 'SIGTERM' });
      this.logger.info(
        {
          event: 'rebuild.deploy.self_stop',
          rebuildId: input.rebuildId,
          service: s.name,
          container: prev.Name,
        },
        'this worker is the previous release: stopping it; the new worker finalizes',
      );
      throw ApplicationFailure.create({
        type: PREVIOUS_WORKER_STOPPING,
        message: `${prev.Name} is this worker: asked it to stop; the new worker removes it`,
        nonRetryable: false,
      });
    }
    await this.stop(prev);
    await this.remove(prev.Id);
    this.logger.info(
      { event: 'rebuild.deploy.finalized', rebuildId: input.rebuildId, service: s.name, removed: prev.Name },
      'previous container removed',
    );
  }
}
