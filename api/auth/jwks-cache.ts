/**
 * A JWKS cache with the behaviour the gateway needs, explicitly:
 * - known `kid`: served from the cache, never waiting on the network; a stale cache is refreshed
 *   in the background, and while the endpoint is down the cached keys keep working;
 * - unknown `kid`: one refetch, at most one per cooldown however many such tokens arrive (a flood
 *   of random kids cannot hammer the issuer); after a successful refetch, keys that the issuer
 *   dropped (rotated out) are gone;
 * - fetches have a timeout and never follow redirects.
 */
import { importJWK, type JWK, type KeyLike } from 'jose';

export interface JwksCacheOptions {
  /** Resolves the JWKS URL (fixed, or discovered once from the issuer). */
  jwksUrl: () => Promise<string>;
  fetchTimeoutMs: number;
  cooldownMs: number;
  maxAgeMs: number;
  onError?: (err: unknown) => void;
  now?: () => number;
}

export class JwksCache {
  private keys = new Map<string, JWK>();
  private imported = new Map<string, KeyLike | Uint8Array>();
  private fetchedAt = -Infinity;
  private lastAttempt = -Infinity;
  private inflight: Promise<void> | undefined;
  /** Why the last fetch failed; rethrown while no key has ever been fetched. */
  private lastError: Error | undefined;

  constructor(private readonly opts: JwksCacheOptions) {}

  private now(): number {
    return (this.opts.now ?? Date.now)();
  }

  private refresh(): Promise<void> {
    this.inflight ??= (async () => {
      this.lastAttempt = this.now();
      try {
        const url = await this.opts.jwksUrl();
        const res = await fetch(url, {
          signal: AbortSignal.timeout(this.opts.fetchTimeoutMs),
          redirect: 'error',
        });
        if (!res.ok) throw new Error(`JWKS ${url} answered ${res.status}`);
        const body = (await res.json()) as { keys?: unknown };
        if (!Array.isArray(body.keys)) throw new Error(`JWKS ${url} has no keys array`);
        const next = new Map<string, JWK>();
        for (const k of body.keys as JWK[]) {
          // Only signature keys with a kid: a key without one could match any token.
          if (typeof k.kid === 'string' && k.kid && (k.use === undefined || k.use === 'sig') && !('d' in k))
            next.set(k.kid, k);
        }
        this.keys = next;
        this.imported.clear();
        this.fetchedAt = this.now();
        this.lastError = undefined;
      } catch (err) {
        this.lastError = err instanceof Error ? err : new Error(String(err));
        throw err;
      } finally {
        this.inflight = undefined;
      }
    })();
    return this.inflight;
  }

  /** The key for `kid` and `alg`, or undefined when the issuer does not publish one. */
  async getKey(kid: string, alg: string): Promise<KeyLike | Uint8Array | undefined> {
    const coolingDown = this.now() - this.lastAttempt < this.opts.cooldownMs;
    if (this.keys.has(kid)) {
      if (this.now() - this.fetchedAt > this.opts.maxAgeMs && !coolingDown) {
        this.refresh().catch((err: unknown) => this.opts.onError?.(err)); // stale: refresh in the background
      }
    } else {
      // Unknown kid: wait for the fetch under way, or start one unless cooling down.
      await (this.inflight ?? (coolingDown ? undefined : this.refresh()))?.catch((err: unknown) =>
        this.opts.onError?.(err),
      );
      // Never fetched a key: the issuer is unreachable (503), for every request of the cooldown, not a bad token (401).
      if (this.fetchedAt === -Infinity && this.lastError !== undefined) throw this.lastError;
    }
    const jwk = this.keys.get(kid);
    if (!jwk) return undefined;
    if (jwk.alg !== undefined && jwk.alg !== alg) return undefined;
    const cacheKey = `${kid}\0${alg}`;
    let key = this.imported.get(cacheKey);
    if (!key) {
      key = await importJWK(jwk, alg);
      this.imported.set(cacheKey, key);
    }
    return key;
  }
}
