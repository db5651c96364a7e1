/** Child processes of the local stack: started in their own process group, logged to files, stopped in order. */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { connect } from 'node:net';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';

const ROOT = resolve(__dirname, '../..');

export interface ManagedProcess {
  name: string;
  pid: number;
  logFile: string;
  exited: Promise<number | null>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. */
  stop(graceMs?: number): Promise<void>;
}

export function startProcess(opts: {
  name: string;
  command: string;
  args: string[];
  logFile: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Also copy output to this stream (e.g. the terminal). */
  tee?: NodeJS.WritableStream;
}): ManagedProcess {
  const log = createWriteStream(opts.logFile, { flags: 'a' });
  const child: ChildProcess = spawn(opts.command, opts.args, {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
    // Own process group: Ctrl-C reaches only the launcher, which stops children in order.
    detached: true,
  });
  for (const s of [child.stdout, child.stderr]) {
    s?.on('data', (d: Buffer) => {
      log.write(d);
      opts.tee?.write(d);
    });
  }
  const exited = new Promise<number | null>((resolve) => {
    child.on('exit', (code) => {
      log.end();
      resolve(code);
    });
    child.on('error', (err) => {
      log.write(`spawn error: ${err.message}\n`);
      log.end();
      resolve(null);
    });
  });
  if (child.pid === undefined) {
    throw new Error(`could not start ${opts.name} (${opts.command})`);
  }
  const pid = child.pid;
  let done = false;
  void exited.then(() => {
    done = true;
  });
  return {
    name: opts.name,
    pid,
    logFile: opts.logFile,
    exited,
    async stop(graceMs = 10_000) {
      if (done) return;
      try {
        process.kill(-pid, 'SIGTERM');
      } catch {
        return;
      }
      const timer = setTimeout(() => {
        try {
          process.kill(-pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }, graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** A free TCP port on the loopback interface. */
/**
 * Starts one of the project's TypeScript entrypoints (`worker/main.ts`, `api/main.ts`, a test
 * child), relative to the repository root, under tsx from the root: how the stack, the benches and
 * the fault suite run the real services.
 */
/**
 * glibc's malloc arenas for the platform's Node processes: at most two instead of eight per core.
 * The worker's native threads (the SDK's Rust core, libuv's pool, the workflow thread) each got an
 * arena of their own, and their freed memory stayed with it: an idle worker held 313 MiB resident
 * with the default and 273 MiB with 2 (docs/benchmarks.md). A value in the caller's environment wins.
 */
export const MALLOC_ARENA_MAX = '2';

export function startEntry(opts: {
  name: string;
  entry: string;
  logFile: string;
  env?: NodeJS.ProcessEnv;
  /** Extra Node flags (e.g. `--cpu-prof`, which NODE_OPTIONS does not accept). */
  nodeArgs?: string[];
}): ManagedProcess {
  return startProcess({
    name: opts.name,
    command: process.execPath,
    args: [...(opts.nodeArgs ?? []), '--import', 'tsx', join(ROOT, opts.entry)],
    cwd: ROOT,
    logFile: opts.logFile,
    env: { MALLOC_ARENA_MAX, ...(opts.env ?? process.env) },
  });
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** True when something accepts TCP connections on host:port. */
export function portOpen(host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ host, port });
    const t = setTimeout(() => {
      sock.destroy();
      resolve(false);
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(t);
      sock.end();
      resolve(true);
    });
    sock.once('error', () => {
      clearTimeout(t);
      resolve(false);
    });
  });
}

/** Polls `check` until it returns true, failing with `what` and the log file after `timeoutMs`. */
export async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  opts: { timeoutMs: number; proc?: ManagedProcess; intervalMs?: number },
): Promise<void> {
  const deadline = Date.now() + opts.timeoutMs;
  let exitedCode: number | null | undefined;
  void opts.proc?.exited.then((c) => {
    exitedCode = c;
  });
  for (;;) {
    if (await check().catch(() => false)) return;
    if (exitedCode !== undefined) {
      throw new Error(
        `${what}: process exited with code ${String(exitedCode)} (log: ${opts.proc?.logFile ?? '-'})`,
      );
    }
    if (Date.now() > deadline) {
      throw new Error(
        `${what}: not ready after ${opts.timeoutMs} ms${opts.proc ? ` (log: ${opts.proc.logFile})` : ''}`,
      );
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 250));
  }
}
