/**
 * The `docker` deployer: replaces each service's container on the local engine, one at a time. The
 * running container is stopped and kept as `<container>-prev` until the new one is healthy, so a
 * rollback restarts exactly what ran before; images are never removed. The engine is the record
 * of what is deployed (labels), so a retried or resumed deploy finds its own work and does nothing.
 */
import type Docker from 'dockerode';
import type { Logger } from 'pino';
import { expandTemplate } from '../../contracts';
import { COMMIT_LABEL, TARGET_LABEL } from '../images/activities';
import type { ServiceDeployInput } from '../images/types';
import type { Deployer } from './deployer';
import { waitHealthy } from './health';

export const SERVICE_LABEL = 'choiros.deploy.service';
export const REBUILD_LABEL = 'choiros.deploy.rebuild-id';
export const PREVIOUS_IMAGE_LABEL = 'choiros.deploy.previous-image';

/** The docker deployer's container name (the targets schema requires one for this deployer). */
function containerOf(s: ServiceDeployInput['service']): string {
  return s.container ?? s.name;
}

function isNotFound(err: unknown): boolean {
  return (err as { statusCode?: number })?.statusCode === 404;
}

export class DockerDeployer implements Deployer {
  constructor(
    private readonly docker: Docker,
    private readonly logger: Logger,
  ) {}

  private async inspect(name: string): Promise<Docker.ContainerInspectInfo | undefined> {
    try {
      return await this.docker.getContainer(name).inspect();
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  private async removeIfExists(name: string): Promise<void> {
    await this.docker
      .getContainer(name)
      .remove({ force: true })
      .catch((err: unknown) => {
        if (!isNotFound(err)) throw err;
      });
  }

  private async create(
    input: ServiceDeployInput,
    image: string,
    previousImage: string | null,
  ): Promise<void> {
    const s = input.service;
    const commitOfImage =
      (await this.docker.getImage(image).inspect()).Config?.Labels?.[COMMIT_LABEL] ?? input.commit;
    const port = s.containerPort !== undefined ? `${s.containerPort}/tcp` : undefined;
    const env = Object.entries(s.env).map(
      ([k, v]) => `${k}=${expandTemplate(v, { commit: commitOfImage, images: input.images })}`,
    );
    await this.docker.createContainer({
      name: containerOf(s),
      Image: image,
      Env: env,
      Labels: {
        ...input.target.labels,
        [TARGET_LABEL]: input.target.name,
        [SERVICE_LABEL]: s.name,
        [COMMIT_LABEL]: commitOfImage,
        [REBUILD_LABEL]: input.rebuildId,
        ...(previousImage ? { [PREVIOUS_IMAGE_LABEL]: previousImage } : {}),
      },
      ...(port ? { ExposedPorts: { [port]: {} } } : {}),
      HostConfig: {
        // Loopback only: a deployed service is reached through a proxy, never straight from outside.
        ...(port
          ? { PortBindings: { [port]: [{ HostIp: '127.0.0.1', HostPort: String(s.hostPort) }] } }
          : {}),
        ...(s.binds.length ? { Binds: s.binds } : {}),
        RestartPolicy: { Name: 'no' },
      },
    });
  }

  async deploy(input: ServiceDeployInput) {
    const s = input.service;
    const image = input.images[s.image];
    if (!image) throw new Error(`service ${s.name}: no built image ${s.image}`);
    const current = await this.inspect(containerOf(s));
    if (current?.Config.Labels?.[COMMIT_LABEL] === input.commit) {
      // Already deployed by an earlier attempt of this (or an identical) release.
      if (!current.State.Running) await this.docker.getContainer(containerOf(s)).start();
      return {
        service: s.name,
        image,
        previousImage: current.Config.Labels?.[PREVIOUS_IMAGE_LABEL] ?? null,
        changed: false,
      };
    }
    let previousImage: string | null = null;
    if (current) {
      previousImage = current.Config.Image;
      await this.removeIfExists(`${containerOf(s)}-prev`);
      // start-first: the old container keeps running (it may be the worker running this activity)
      // until the new one is healthy; finalize stops it.
      if (s.strategy === 'stop-first') await this.stop(containerOf(s));
      await this.docker.getContainer(containerOf(s)).rename({ name: `${containerOf(s)}-prev` });
    } else {
      // A crash between keeping the old container and starting the new one: the kept one is the previous.
      previousImage = (await this.inspect(`${containerOf(s)}-prev`))?.Config.Image ?? null;
    }
    await this.create(input, image, previousImage);
    await this.docker.getContainer(containerOf(s)).start();
    this.logger.info(
      { event: 'rebuild.deploy.replaced', rebuildId: input.rebuildId, service: s.name, image, previousImage },
      'service replaced',
    );
    return { service: s.name, image, previousImage, changed: true };
  }

  private async stop(name: string): Promise<void> {
    await this.docker
      .getContainer(name)
      .stop({ t: 10 })
      .catch((err: unknown) => {
        const code = (err as { statusCode?: number })?.statusCode;
        if (code !== 304 && code !== 404) throw err; // 304: already stopped
      });
  }

  /** A portless service is healthy when its container stays up (running, never restarted) for `stableSeconds`. */
  private async stable(input: ServiceDeployInput, signal?: AbortSignal) {
    const s = input.service;
    const started = Date.now();
    const until = started + s.health.stableSeconds * 1000;
    while (Date.now() < until && !signal?.aborted) {
      const c = await this.inspect(containerOf(s));
      if (!c?.State.Running)
        return {
          healthy: false,
          detail: c ? `container exited with ${c.State.ExitCode}` : 'container is gone',
          durationMs: Date.now() - started,
        };
      if (c.Config.Labels?.[COMMIT_LABEL] !== input.commit)
        return {
          healthy: false,
          detail: 'another release replaced the container',
          durationMs: Date.now() - started,
        };
      await new Promise((r) => setTimeout(r, 500));
    }
    return {
      healthy: true,
      detail: `running for ${s.health.stableSeconds}s`,
      durationMs: Date.now() - started,
    };
  }

  async health(input: ServiceDeployInput, signal?: AbortSignal) {
    const s = input.service;
    if (s.hostPort === undefined) return this.stable(input, signal);
    const result = await waitHealthy({
      port: s.hostPort,
      path: s.health.path,
      ...(s.health.expectVersion ? { expect: input.commit } : {}),
      timeoutMs: s.health.timeoutSeconds * 1000,
      ...(signal ? { signal } : {}),
    });
    if (result.healthy) return result;
    const state = (await this.inspect(containerOf(s)))?.State;
    const exited = state && !state.Running ? `; container exited with ${state.ExitCode}` : '';
    return { ...result, detail: `${result.detail}${exited}` };
  }

  async rollback(input: ServiceDeployInput, previousImage: string | null) {
    const s = input.service;
    await this.removeIfExists(containerOf(s));
    const kept = await this.inspect(`${containerOf(s)}-prev`);
    let restored: string | null = null;
    if (kept) {
      await this.docker.getContainer(`${containerOf(s)}-prev`).rename({ name: containerOf(s) });
      if (!kept.State.Running) await this.docker.getContainer(containerOf(s)).start();
      restored = kept.Config.Image;
    } else if (previousImage) {
      await this.create(input, previousImage, null);
      await this.docker.getContainer(containerOf(s)).start();
      restored = previousImage;
    }
    if (!restored) return { restoredImage: null, healthy: false };
    const h =
      s.hostPort === undefined
        ? { healthy: (await this.inspect(containerOf(s)))?.State.Running === true }
        : await waitHealthy({
            port: s.hostPort,
            path: s.health.path,
            timeoutMs: s.health.timeoutSeconds * 1000,
          });
    this.logger.warn(
      {
        event: 'rebuild.rollback',
        rebuildId: input.rebuildId,
        service: s.name,
        restored,
        healthy: h.healthy,
      },
      'service rolled back',
    );
    return { restoredImage: restored, healthy: h.healthy };
  }

  async finalize(input: ServiceDeployInput) {
    // Under start-first this stops the old worker, possibly the one running this activity: the
    // attempt dies with it and the retry on the new worker finds nothing left to do.
    await this.stop(`${containerOf(input.service)}-prev`);
    await this.removeIfExists(`${containerOf(input.service)}-prev`);
  }
}
