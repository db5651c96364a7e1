/**
 * A delaying TCP proxy on loopback, for the `temporal-slow` fault: the API and the workers reach
 * Temporal through it. With a delay set, every chunk a client sends is held a random 500–1500 ms
 * (the range is the scenario's) before it goes upstream, in order (a chunk never overtakes the one
 * before it), so every gRPC call takes that much longer; answers come back at once. Without a
 * delay it forwards as it receives. The upstream closing or failing closes the client's side too,
 * as if the server itself had gone (the `temporal-restart` scenario goes through it as well).
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

export interface DelayRange {
  minMs: number;
  maxMs: number;
}

/** Writes chunks to `to` no earlier than their release time, keeping their order. */
class DelayedPipe {
  private queue: { at: number; buf: Buffer }[] = [];
  private timer?: NodeJS.Timeout;
  private lastAt = 0;
  private ended = false;

  constructor(
    private readonly to: Socket,
    private readonly delay: () => DelayRange | undefined,
  ) {}

  push(buf: Buffer): void {
    const d = this.delay();
    const now = Date.now();
    const at = d ? now + d.minMs + Math.random() * (d.maxMs - d.minMs) : now;
    this.lastAt = Math.max(this.lastAt, at);
    this.queue.push({ at: this.lastAt, buf });
    this.pump();
  }

  end(): void {
    this.ended = true;
    this.pump();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.queue = [];
  }

  private pump(): void {
    if (this.timer) return;
    const now = Date.now();
    while (this.queue.length > 0 && (this.queue[0]?.at ?? 0) <= now) {
      const next = this.queue.shift();
      if (next && !this.to.destroyed) this.to.write(next.buf);
    }
    if (this.queue.length > 0) {
      const wait = Math.max(0, (this.queue[0]?.at ?? now) - now);
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.pump();
      }, wait);
    } else if (this.ended && !this.to.destroyed) {
      this.to.end();
    }
  }
}

export class DelayProxy {
  /** The delay of every client→server chunk; none when undefined. */
  delay: DelayRange | undefined;
  /** Client→server chunks delayed so far (the fault's evidence). */
  delayed = 0;
  private server?: Server;
  private readonly sockets = new Set<Socket>();

  constructor(
    private readonly upstreamHost: string,
    private readonly upstreamPort: number,
  ) {}

  /** Listens on loopback `port` (0: any); resolves with the port. */
  listen(port = 0): Promise<number> {
    const server = createServer((client) => this.accept(client));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        const addr = server.address();
        resolve(typeof addr === 'object' && addr ? addr.port : port);
      });
    });
  }

  private accept(client: Socket): void {
    const upstream = connect(this.upstreamPort, this.upstreamHost);
    this.sockets.add(client);
    this.sockets.add(upstream);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const toServer = new DelayedPipe(upstream, () => this.delay);
    const close = (): void => {
      toServer.stop();
      client.destroy();
      upstream.destroy();
      this.sockets.delete(client);
      this.sockets.delete(upstream);
    };
    client.on('data', (buf: Buffer) => {
      if (this.delay) this.delayed += 1;
      toServer.push(buf);
    });
    client.on('end', () => toServer.end());
    upstream.on('data', (buf: Buffer) => {
      if (!client.destroyed) client.write(buf);
    });
    upstream.on('end', () => client.end());
    client.on('error', close);
    upstream.on('error', close);
    client.on('close', close);
    upstream.on('close', close);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    const server = this.server;
    if (server) await new Promise<void>((r) => server.close(() => r()));
  }
}
