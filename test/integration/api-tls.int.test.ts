/**
 * The API over HTTPS (API_TLS_CERT_FILE / API_TLS_KEY_FILE): the real api/main.ts with a
 * certificate this test makes (openssl, a CA and a server certificate for 127.0.0.1), on loopback.
 */
import { mkdtemp, readFile } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { loadApiConfig } from '../../api/config';
import { freePort } from '../../infra/stack/process';
import { makeTestCerts } from '../helpers/certs';
import { env } from '../helpers/integration';
import { spawnService, type ServiceProcess } from '../helpers/worker-process';

let api: ServiceProcess | undefined;

afterAll(async () => {
  await api?.signal('SIGTERM');
});

function get(url: string, ca?: Buffer): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { ...(ca ? { ca } : {}), timeout: 10_000 }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('a certificate and a key without each other are refused by the config loader', () => {
  expect(() => loadApiConfig({ AUTH_ISSUER: 'https://issuer.example', API_TLS_CERT_FILE: '/x.pem' })).toThrow(
    /API_TLS_CERT_FILE and API_TLS_KEY_FILE go together/,
  );
  expect(() => loadApiConfig({ AUTH_ISSUER: 'https://issuer.example', API_TLS_KEY_FILE: '/x.key' })).toThrow(
    /go together/,
  );
});

test('with API_TLS_CERT_FILE and API_TLS_KEY_FILE the API serves HTTPS that a client trusting the CA verifies', async () => {
  const dir = await mkdtemp(join(env.workDir(), 'api-tls-'));
  const certs = await makeTestCerts(dir);
  const port = await freePort();
  api = await spawnService({
    entry: 'api/main.ts',
    name: 'api-tls',
    readyEvent: 'api.started',
    env: {
      ...process.env,
      TEMPORAL_ADDRESS: env.temporalAddress(),
      NATS_URL: env.natsUrl(),
      NATS_CREDS: env.apiCreds() ?? '',
      AUTH_ISSUER: 'http://127.0.0.1:9',
      API_HOST: '127.0.0.1',
      API_PORT: String(port),
      API_TLS_CERT_FILE: certs.serverCert,
      API_TLS_KEY_FILE: certs.serverKey,
      GRPC_PORT: '0',
      CHOIROS_VERSION: 'tls-it',
    },
  });
  expect(api.lines.some((l) => l.includes('"tls":true'))).toBe(true);
  const ca = await readFile(certs.ca);

  const ok = await get(`https://127.0.0.1:${port}/healthz`, ca);
  expect(ok.status).toBe(200);
  expect(ok.body).toContain('tls-it');

  // Without the CA the certificate is not trusted; plain HTTP gets no HTTP answer.
  await expect(get(`https://127.0.0.1:${port}/healthz`)).rejects.toThrow(
    /self-signed|unable to verify|certificate/i,
  );
  const plain = await fetch(`http://127.0.0.1:${port}/healthz`).then(
    (r) => r.status,
    () => 'refused',
  );
  expect(plain).not.toBe(200);
});
