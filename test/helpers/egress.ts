/**
 * Egress test targets: small HTTP servers in containers on the project's own `choiros-egress`
 * bridge (the only network egress tests may reach), created and removed by the test.
 */
import type Docker from 'dockerode';
import { EGRESS_NETWORK, LABELS } from '../../activities/sandbox/docker-driver';
import type { NatsConnection } from 'nats';
import {
  connectNats,
  env,
  startTestApi,
  startTestWorker,
  type TestApi,
  type TestWorker,
} from './integration';

export function egressTargets(docker: Docker) {
  const targets: Docker.Container[] = [];
  return {
    targets,
    /** Creates the egress bridge unless it exists (another test run may own it). */
    ensureNetwork: async (): Promise<void> => {
      await docker
        .createNetwork({
          Name: EGRESS_NETWORK,
          Driver: 'bridge',
          CheckDuplicate: true,
          Labels: { [LABELS.managed]: 'true', 'choiros.purpose': 'egress' },
        })
        .catch((err: { statusCode?: number }) => {
          if (err.statusCode !== 409) throw err;
        });
    },
    /** A container named `name` answering every request on :8080 with `reply`. */
    target: async (name: string, reply: string): Promise<Docker.Container> => {
      const c = await docker.createContainer({
        name,
        Image: env.sandboxImage(),
        Cmd: ['node', '-e', `require('http').createServer((q, s) => s.end('${reply}')).listen(8080)`],
        User: '10001:10001',
        Labels: { [LABELS.managed]: 'true', 'choiros.test': 'egress' },
        HostConfig: { NetworkMode: EGRESS_NETWORK, CapDrop: ['ALL'], ReadonlyRootfs: true },
      });
      await c.start();
      targets.push(c);
      return c;
    },
    /** A target's address on the egress bridge. */
    ipOf: async (c: Docker.Container): Promise<string> => {
      const info = (await c.inspect()) as {
        NetworkSettings: { Networks: Record<string, { IPAddress: string }> };
      };
      return info.NetworkSettings.Networks[EGRESS_NETWORK]?.IPAddress ?? '';
    },
    /** Removes the targets, and the bridge once nothing uses it (another test run may still). */
    cleanup: async (): Promise<void> => {
      for (const t of targets) await t.remove({ force: true }).catch(() => undefined);
      await docker
        .getNetwork(EGRESS_NETWORK)
        .remove()
        .catch(() => undefined);
    },
  };
}

/**
 * The egress tests' stack: the bridge, the targets, a worker whose proxies may reach exactly the
 * first target's address (a private address, excepted by the platform's CHOIROS_EGRESS_ALLOW_CIDRS;
 * docs/egress.md), the API and a NATS reader.
 */
export async function startEgressStack(
  docker: Docker,
  hostId: string,
  servers: { name: string; reply: string }[],
): Promise<{
  egress: ReturnType<typeof egressTargets>;
  worker: TestWorker;
  api: TestApi;
  nats: NatsConnection;
  stop(): Promise<void>;
}> {
  const egress = egressTargets(docker);
  await egress.ensureNetwork();
  for (const t of servers) await egress.target(t.name, t.reply);
  const allowed = egress.targets[0];
  if (!allowed) throw new Error('startEgressStack needs at least one target');
  const worker = await startTestWorker(hostId, {
    extraEnv: { CHOIROS_EGRESS_ALLOW_CIDRS: `${await egress.ipOf(allowed)}/32` },
  });
  const api = await startTestApi();
  const nats = await connectNats(env.apiCreds(), `${hostId}-reader`);
  return {
    egress,
    worker,
    api,
    nats,
    async stop() {
      await egress.cleanup();
      await nats.drain();
      await api.stop();
      await worker.stop();
    },
  };
}
