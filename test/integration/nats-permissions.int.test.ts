/**
 * The NATS server config the project generates: workers publish, users subscribe to their own
 * prefix only (operator-mode JWTs minted from the account key), expired credentials are refused.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect, credsAuthenticator, type NatsConnection } from 'nats';
import { mintUserCreds } from '../../api/nats/credentials';
import { connectNats, env } from '../helpers/integration';

let worker: NatsConnection;
let accountSeed: string;

beforeAll(async () => {
  worker = await connectNats(env.workerCreds(), 'perm-worker');
  const dir = env.natsAuthDir();
  // The account seed is the only secret needed to mint user credentials.
  accountSeed = (await readFile(join(dir, 'choiros-account.seed'), 'utf8')).trim();
});

afterAll(async () => {
  await worker?.drain();
});

async function connectUser(userId: string, ttlSeconds = 60): Promise<{ nc: NatsConnection }> {
  const { creds } = await mintUserCreds(accountSeed, userId, ttlSeconds);
  const nc = await connect({
    servers: env.natsUrl(),
    authenticator: credsAuthenticator(new TextEncoder().encode(creds)),
    reconnect: false,
  });
  return { nc };
}

describe('NATS permissions', () => {
  test("when a user subscribes to their own prefix, then they receive the worker's events", async () => {
    const { nc } = await connectUser('alice');
    const sub = nc.subscribe('choiros.alice.>', { max: 1 });
    await nc.flush();
    worker.publish('choiros.alice.run.r1.note.status', new TextEncoder().encode('hi'));
    for await (const m of sub) expect(m.subject).toBe('choiros.alice.run.r1.note.status');
    await nc.close();
  });

  test("when a user subscribes to another user's prefix or to everything, then the server refuses", async () => {
    const { nc } = await connectUser('alice');
    for (const subject of ['choiros.bob.>', 'choiros.>', '>', '$JS.API.>']) {
      const sub = nc.subscribe(subject);
      const err = await (async () => {
        try {
          for await (const _ of sub) {
            /* nothing may arrive */
          }
          return undefined;
        } catch (e) {
          return e as Error;
        }
      })();
      expect(err?.message).toMatch(/permissions violation/i);
    }
    await nc.close().catch(() => undefined);
  });

  test('when a user publishes, even on their own prefix, then nothing is delivered (only workers publish)', async () => {
    const received: string[] = [];
    const spy = worker.subscribe('choiros.>');
    void (async () => {
      for await (const m of spy) received.push(m.subject);
    })();
    await worker.flush();
    const { nc } = await connectUser('alice');
    nc.publish('choiros.alice.run.r1.note.status', new TextEncoder().encode('forged'));
    nc.publish('choiros.bob.run.r2.note.status', new TextEncoder().encode('forged'));
    await nc.flush().catch(() => undefined);
    // A control message from the worker proves the spy is live; the forged ones never arrive.
    worker.publish('choiros.control.run.r0.note.status', new TextEncoder().encode('control'));
    await new Promise((r) => setTimeout(r, 500));
    spy.unsubscribe();
    expect(received).toEqual(['choiros.control.run.r0.note.status']);
    await nc.close().catch(() => undefined);
  });

  test('when credentials have expired, then the connection is refused', async () => {
    const { creds } = await mintUserCreds(accountSeed, 'alice', -10);
    await expect(
      connect({
        servers: env.natsUrl(),
        authenticator: credsAuthenticator(new TextEncoder().encode(creds)),
        reconnect: false,
      }),
    ).rejects.toThrow(/authorization|expired/i);
  });
});
