/** Types of the egress proxy's exports (proxy.js is plain Node so it runs as-is in the sandbox image). */
import type { Server } from 'node:http';

export interface Decision {
  host: string;
  allowed: boolean;
  reason: string;
  address?: string;
}

/** The proxy's counts of every attempt it decided on (one `{ summary }` line on SIGUSR2). */
export interface ProxySummary {
  seq: number;
  at: number;
  total: number;
  allowed: number;
  denied: number;
  rateLimited: number;
  individual: number;
  destinations: Array<{ host: string; port: number; allowed: number; denied: number }>;
  other: { allowed: number; denied: number };
  reasons: Record<string, number>;
}

export interface Cidr {
  text: string;
}

/** Why an address is not a public unicast destination (e.g. `loopback`, `ipv4-mapped loopback`), or null. */
export function classify(address: string): string | null;
/** The reason the proxy refuses to connect to `address`, or null. */
export function refuseAddress(
  address: string,
  ranges?: { allowCidrs?: Cidr[]; denyCidrs?: Cidr[] },
): string | null;
export function parseCidrs(text: string | undefined): Cidr[];
/** True for a host a resolver would read as an IP address (any IPv4 notation, IPv6). */
export function isIpLike(host: string): boolean;
export function createLimiter(opts: {
  ratePerSecond: number;
  burst: number;
  maxAttempts: number;
  now?: () => number;
}): { take(): boolean };
export function createLog(opts: { logFirst: number; write: (line: object) => void }): {
  record(attempt: { at: number; host: string; port: number; allowed: boolean; reason: string }): void;
  summary(): { summary: ProxySummary };
};
export type Lookup = (
  host: string,
  opts: { all: true; verbatim: true },
  cb: (err: NodeJS.ErrnoException | null, list: Array<{ address: string; family: number }>) => void,
) => void;
export function createProxy(
  env?: Record<string, string | undefined>,
  deps?: { lookup?: Lookup; write?: (line: object) => void },
): {
  server: Server;
  decide(host: string, port: number, protocol?: string): Promise<Decision>;
  summary(): { summary: ProxySummary };
  allow: Set<string>;
};
export function v6Bytes(address: string): number[] | null;
/** The address in `cidrs` among this host's interfaces; 0.0.0.0 when `cidrs` is empty; throws when none. */
export function listenAddress(
  cidrs: string | undefined,
  interfaces?: Record<string, Array<{ address: string }> | undefined>,
): string;
