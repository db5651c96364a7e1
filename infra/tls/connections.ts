/**
 * TLS and credentials for the platform's own connections to Temporal and NATS, shared by the API,
 * the worker and the compose setup job: the settings (a zod shape spread into their config
 * schemas) and the connection options they turn into. Unset settings keep plaintext connections.
 */
import { readFile } from 'node:fs/promises';
import { z } from 'zod';

const file = z.string().min(1);

export const connectionTlsShape = {
  TEMPORAL_TLS: z
    .enum(['true', 'false', '1', '0'])
    .optional()
    .transform((v) => v === 'true' || v === '1')
    .describe(
      "Connect to Temporal over TLS with the system's roots (implied by any `TEMPORAL_TLS_*` file or `TEMPORAL_API_KEY`)",
    ),
  TEMPORAL_TLS_CA_FILE: file
    .optional()
    .describe(
      "PEM CA that signed the Temporal frontend's certificate (self-hosted Temporal with its own CA); unset: the system's roots",
    ),
  TEMPORAL_TLS_CERT_FILE: file
    .optional()
    .describe(
      "mTLS: this client's PEM certificate, with `TEMPORAL_TLS_KEY_FILE` (Temporal Cloud namespaces with CA auth)",
    ),
  TEMPORAL_TLS_KEY_FILE: file.optional().describe("mTLS: this client's PEM private key"),
  TEMPORAL_TLS_SERVER_NAME: z
    .string()
    .min(1)
    .optional()
    .describe(
      "Name the frontend's certificate is checked against, when it is not the host of `TEMPORAL_ADDRESS`",
    ),
  TEMPORAL_API_KEY: z
    .string()
    .min(1)
    .optional()
    .describe(
      'API key sent as `Authorization: Bearer` on every Temporal call (Temporal Cloud API-key namespaces); implies TLS. A secret: keep it out of `.env` files that are shared',
    ),
  NATS_TLS_CA_FILE: file
    .optional()
    .describe(
      "PEM CA that signed the NATS servers' certificates; setting any `NATS_TLS_*` file turns TLS on",
    ),
  NATS_TLS_CERT_FILE: file
    .optional()
    .describe(
      'Client certificate (PEM), when the NATS servers verify clients (`verify: true`), with `NATS_TLS_KEY_FILE`',
    ),
  NATS_TLS_KEY_FILE: file.optional().describe('Client private key (PEM) of `NATS_TLS_CERT_FILE`'),
};

export const connectionTlsSchema = z.object(connectionTlsShape);
export type ConnectionTlsConfig = z.output<typeof connectionTlsSchema>;

/** Throws a config error naming the pair when one of a certificate/key pair is set without the other. */
export function checkConnectionTls(config: ConnectionTlsConfig): void {
  for (const [cert, key] of [
    ['TEMPORAL_TLS_CERT_FILE', 'TEMPORAL_TLS_KEY_FILE'],
    ['NATS_TLS_CERT_FILE', 'NATS_TLS_KEY_FILE'],
  ] as const) {
    if ((config[cert] === undefined) !== (config[key] === undefined))
      throw new Error(`invalid configuration:\n  ${cert}: ${cert} and ${key} go together`);
  }
}

/** What Connection.connect and NativeConnection.connect take besides the address. */
export interface TemporalConnectionSecurity {
  tls?: {
    serverNameOverride?: string;
    serverRootCACertificate?: Buffer;
    clientCertPair?: { crt: Buffer; key: Buffer };
  };
  apiKey?: string;
}

export async function temporalConnectionSecurity(
  config: ConnectionTlsConfig,
): Promise<TemporalConnectionSecurity> {
  checkConnectionTls(config);
  const on =
    config.TEMPORAL_TLS ||
    config.TEMPORAL_TLS_CA_FILE !== undefined ||
    config.TEMPORAL_TLS_CERT_FILE !== undefined ||
    config.TEMPORAL_API_KEY !== undefined;
  if (!on) return {};
  return {
    tls: {
      ...(config.TEMPORAL_TLS_SERVER_NAME ? { serverNameOverride: config.TEMPORAL_TLS_SERVER_NAME } : {}),
      ...(config.TEMPORAL_TLS_CA_FILE
        ? { serverRootCACertificate: await readFile(config.TEMPORAL_TLS_CA_FILE) }
        : {}),
      ...(config.TEMPORAL_TLS_CERT_FILE && config.TEMPORAL_TLS_KEY_FILE
        ? {
            clientCertPair: {
              crt: await readFile(config.TEMPORAL_TLS_CERT_FILE),
              key: await readFile(config.TEMPORAL_TLS_KEY_FILE),
            },
          }
        : {}),
    },
    ...(config.TEMPORAL_API_KEY ? { apiKey: config.TEMPORAL_API_KEY } : {}),
  };
}

/** The `tls` option of nats' connect(), or nothing for plaintext. */
export function natsTlsOptions(config: ConnectionTlsConfig): {
  tls?: { caFile?: string; certFile?: string; keyFile?: string };
} {
  checkConnectionTls(config);
  if (!config.NATS_TLS_CA_FILE && !config.NATS_TLS_CERT_FILE) return {};
  return {
    tls: {
      ...(config.NATS_TLS_CA_FILE ? { caFile: config.NATS_TLS_CA_FILE } : {}),
      ...(config.NATS_TLS_CERT_FILE ? { certFile: config.NATS_TLS_CERT_FILE } : {}),
      ...(config.NATS_TLS_KEY_FILE ? { keyFile: config.NATS_TLS_KEY_FILE } : {}),
    },
  };
}
