/** Makes a Docker engine reachable: uses DOCKER_HOST or the default socket, else starts dockerd as root. */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import Docker from 'dockerode';
import { startProcess, waitFor, type ManagedProcess } from './process';

export interface DockerEngine {
  docker: Docker;
  /** Set when this call started dockerd; the caller stops it on shutdown. */
  process?: ManagedProcess;
}

async function ping(docker: Docker): Promise<boolean> {
  try {
    await docker.ping();
    return true;
  } catch {
    return false;
  }
}

function findDockerd(): string | undefined {
  return ['/usr/sbin/dockerd', '/usr/bin/dockerd', '/usr/local/bin/dockerd'].find((p) => existsSync(p));
}

export async function ensureDockerEngine(opts: { dataRoot: string; logDir: string }): Promise<DockerEngine> {
  const docker = new Docker();
  if (await ping(docker)) return { docker };
  if (process.env.DOCKER_HOST) {
    throw new Error(`Docker engine at DOCKER_HOST=${process.env.DOCKER_HOST} does not answer`);
  }
  const dockerd = findDockerd();
  if (!dockerd)
    throw new Error('no Docker engine is reachable and dockerd is not installed (apt-get install docker.io)');
  if (process.getuid?.() !== 0)
    throw new Error('no Docker engine is reachable and only root can start dockerd here');
  await mkdir(opts.dataRoot, { recursive: true });
  const proc = startProcess({
    name: 'dockerd',
    command: dockerd,
    args: ['--data-root', opts.dataRoot, '--pidfile', join(opts.dataRoot, 'dockerd.pid')],
    logFile: join(opts.logDir, 'dockerd.log'),
  });
  await waitFor('dockerd', () => ping(docker), { timeoutMs: 60_000, proc });
  return { docker, process: proc };
}
