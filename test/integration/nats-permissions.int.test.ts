/**
 * The NATS server config the project generates: workers publish, users subscribe to their own
 * prefix only (operator-mode JWTs minted from the account key), expired credentials are refused.
 */
import { ACCOUNT_SEED_FILE } from '../../infra/nats/auth';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect, credsAuthenticator, type NatsConnection } from 'nats';
import { mintUserCreds } from '../../api/nats/credentials';
import { connectNats, env, poll } from '../helpers/integration';

let worker: NatsConnection;
let accountSeed: string;

beforeAll(async () => {
  worker = await connectNats(env.workerCreds(), 'perm-worker');
  const dir = env.natsAuthDir();
  // The account seed is the only secret needed to mint user credentials.
  accountSeed = (await readFile(join(dir, ACCOUNT_SEED_FILE), 'utf8')).trim();
});

afterAll(async () => {
  await worker?.drain();
});

async function connectUser(
  userId: string,
  ttlSeconds = 60,
  tenant = 'acme',
): Promise<{ nc: NatsConnection }> {
  const { creds } = await mintUserCreds(accountSeed, { tenant, userId }, ttlSeconds);
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
    const sub = nc.subscribe('choiros.acme.alice.>', { max: 1 });
    await nc.flush();
    worker.publish('choiros.acme.alice.run.r1.note.status', new TextEncoder().encode('hi'));
    const subjects: string[] = [];
    for await (const m of sub) subjects.push(m.subject);
    expect(subjects).toEqual(['choiros.acme.alice.run.r1.note.status']);
    await nc.close();
  });

  test("when a user subscribes to another user's prefix or to everything, then the server refuses", async () => {
    const { nc } = await connectUser('alice');
    // Another user, the same user id in another tenant, the tenant, layout-1 subjects, everything.
    for (const subject of [
      'choiros.acme.bob.>',
      'choiros.globex.alice.>',
      'choiros.*.alice.>',
      'choiros.acme.>',
      'choiros.alice.>',
      'choiros.>',
      '>',
      '$JS.API.>',
    ]) {
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
    // Subjects of this test only: other test files publish on the same server at the same time.
    const run = `perm-${Date.now()}`;
    const spies = ['alice', 'bob', 'control'].map((u) => worker.subscribe(`choiros.acme.${u}.run.${run}.>`));
    for (const spy of spies) {
      void (async () => {
        for await (const m of spy) received.push(m.subject);
      })();
    }
    await worker.flush();
    const { nc } = await connectUser('alice');
    nc.publish(`choiros.acme.alice.run.${run}.note.status`, new TextEncoder().encode('forged'));
    nc.publish(`choiros.acme.bob.run.${run}.note.status`, new TextEncoder().encode('forged'));
    await nc.flush().catch(() => undefined);
    // The server has handled the forged publishes (flush); a control message sent after them
    // arrives, and by then the forged ones would have too.
    worker.publish(`choiros.acme.control.run.${run}.note.status`, new TextEncoder().encode('control'));
    await poll(
      async () => received,
      (r) => r.length > 0,
      5000,
      20,
    );
    for (const spy of spies) spy.unsubscribe();
    expect(received).toEqual([`choiros.acme.control.run.${run}.note.status`]);
    await nc.close().catch(() => undefined);
  });

  test('when credentials have expired, then the connection is refused', async () => {
    const { creds } = await mintUserCreds(accountSeed, { tenant: 'acme', userId: 'alice' }, -10);
    await expect(
      connect({
        servers: env.natsUrl(),
        authenticator: credsAuthenticator(new TextEncoder().encode(creds)),
        reconnect: false,
      }),
    ).rejects.toThrow(/authorization|expired/i);
  });
});
