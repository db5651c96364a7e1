/**
 * TLS for the platform's Temporal and NATS connections (infra/tls/connections.ts), on loopback with
 * certificates this test makes:
 * - Temporal: a TLS front that demands a client certificate signed by the test CA (mTLS), relaying
 *   to the test's Temporal dev server; the API's Connection and the worker's NativeConnection get
 *   through it with the settings, and are refused without the client certificate.
 * - NATS: a real nats-server with `tls { verify: true }`; a client with the settings round-trips a
 *   message, one without is refused.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { connect as netConnect } from 'node:net';
import { join } from 'node:path';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:tls';
import { Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { connect as natsConnect } from 'nats';
import { connectionTlsSchema, natsTlsOptions, temporalConnectionSecurity } from '../../infra/tls/connections';
import { freePort, waitFor } from '../../infra/stack/process';
import { makeTestCerts, type TestCerts } from '../helpers/certs';
import { env } from '../helpers/integration';

let certs: TestCerts;
let dir: string;
let front: TlsServer | undefined;
let nats: ChildProcess | undefined;

beforeAll(async () => {
  dir = await mkdtemp(join(env.workDir(), 'conn-tls-'));
  certs = await makeTestCerts(dir);
});

afterAll(async () => {
  await new Promise<void>((r) => (front ? front.close(() => r()) : r()));
  nats?.kill('SIGTERM');
});

async function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = netConnect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

test('Temporal over mTLS: the client and worker connections pass a front that demands a client certificate', async () => {
  const [host, portText] = env.temporalAddress().split(':');
  front = createTlsServer(
    {
      cert: await readFile(certs.serverCert),
      key: await readFile(certs.serverKey),
      ca: await readFile(certs.ca),
      requestCert: true,
      rejectUnauthorized: true,
      ALPNProtocols: ['h2'],
    },
    (sock) => {
      const up = netConnect({ host, port: Number(portText) });
      sock.pipe(up).pipe(sock);
      up.on('error', () => sock.destroy());
      sock.on('error', () => up.destroy());
    },
  );
  const port = await freePort();
  await new Promise<void>((r) => front?.listen(port, '127.0.0.1', () => r()));
  const address = `127.0.0.1:${port}`;

  const settings = connectionTlsSchema.parse({
    TEMPORAL_TLS_CA_FILE: certs.ca,
    TEMPORAL_TLS_CERT_FILE: certs.clientCert,
    TEMPORAL_TLS_KEY_FILE: certs.clientKey,
  });
  const security = await temporalConnectionSecurity(settings);
  expect(security.tls?.clientCertPair).toBeDefined();

  const client = await Connection.connect({ address, connectTimeout: '10 seconds', ...security });
  const info = await client.workflowService.getSystemInfo({});
  expect(info.serverVersion).toBeTruthy();
  await client.close();

  const native = await NativeConnection.connect({ address, ...security });
  await native.close();

  // Without a client certificate the front refuses the handshake.
  const noCert = await temporalConnectionSecurity(
    connectionTlsSchema.parse({ TEMPORAL_TLS_CA_FILE: certs.ca }),
  );
  await expect(
    Connection.connect({ address, connectTimeout: '3 seconds', ...noCert }).then(async (c) => {
      try {
        await c.workflowService.getSystemInfo({});
      } finally {
        await c.close();
      }
    }),
  ).rejects.toThrow();
  // A plaintext client (no settings) does not get through either.
  expect(await temporalConnectionSecurity(connectionTlsSchema.parse({}))).toEqual({});
});

test('NATS over TLS: a client with the settings round-trips a message; one without TLS settings is refused', async () => {
  const bin = process.env.CHOIROS_NATS_SERVER_BIN;
  if (!bin) throw new Error('CHOIROS_NATS_SERVER_BIN is not set (source provisioned.env)');
  const port = await freePort();
  const conf = join(dir, 'nats-tls.conf');
  await writeFile(
    conf,
    [
      `host: 127.0.0.1`,
      `port: ${port}`,
      `tls {`,
      `  cert_file: "${certs.serverCert}"`,
      `  key_file: "${certs.serverKey}"`,
      `  ca_file: "${certs.ca}"`,
      `  verify: true`,
      `}`,
      '',
    ].join('\n'),
  );
  nats = spawn(bin, ['-c', conf], { stdio: 'ignore' });
  await waitFor('nats-server with TLS', () => portOpen(port), { timeoutMs: 20_000 });

  const settings = connectionTlsSchema.parse({
    NATS_TLS_CA_FILE: certs.ca,
    NATS_TLS_CERT_FILE: certs.clientCert,
    NATS_TLS_KEY_FILE: certs.clientKey,
  });
  const nc = await natsConnect({ servers: `nats://127.0.0.1:${port}`, ...natsTlsOptions(settings) });
  const sub = nc.subscribe('choiros.tls.test', { max: 1 });
  nc.publish('choiros.tls.test', new TextEncoder().encode('hello'));
  for await (const m of sub) expect(new TextDecoder().decode(m.data)).toBe('hello');
  await nc.close();

  await expect(
    natsConnect({ servers: `nats://127.0.0.1:${port}`, reconnect: false, timeout: 3000 }),
  ).rejects.toThrow();
  // A certificate without its key is a configuration error, named.
  expect(() => natsTlsOptions(connectionTlsSchema.parse({ NATS_TLS_CERT_FILE: certs.clientCert }))).toThrow(
    /NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE go together/,
  );
});
