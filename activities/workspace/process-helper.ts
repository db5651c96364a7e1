/**
 * Runs the worker's helper programs (git, chown) and the local sandbox driver's commands from a
 * small, long-lived child process instead of from the worker itself.
 *
 * Why: starting a process forks the caller, and a fork costs in proportion to the caller's memory.
 * The worker holds hundreds of MiB (workflow caches, gRPC, V8 heaps), and every spawn blocks its
 * event loop for the fork: ≈ 25 ms per spawn under load, about 20 git calls per run, which was
 * half of the worker's main-thread time in a profile of 40 concurrent runs. The helper process is
 * small, so its forks are cheap, and the worker only exchanges messages with it. The figures are in
 * docs/benchmarks.md ("Process helper").
 *
 * Faults: a helper that dies fails the calls it was running (the activity's retry runs them again,
 * as after any failed git call) and the next call starts a new helper. A helper that cannot be
 * started at all (it exits before saying it is ready) is not fatal: the calls waiting for it, and
 * every call for the next minute, run directly from the worker as before, with a process warning.
 */
import { execFile, fork, spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { z } from 'zod';

export interface RunProcessOptions {
  cwd?: string;
  /** The child's whole environment; the worker's own when not given. */
  env?: NodeJS.ProcessEnv;
  /** Kill (SIGTERM) after this long. Default: no limit. */
  timeoutMs?: number;
  /** Most bytes kept of stdout and of stderr each; the process is killed when it writes more. */
  maxBuffer?: number;
}

export interface RunProcessResult {
  stdout: string;
  stderr: string;
}

/** A program that could not be started, exited non-zero, was killed, or was lost with the helper. */
export class ProcessError extends Error {
  override readonly name = 'ProcessError';
  constructor(
    message: string,
    /** The exit code, or a spawn error code such as `ENOENT`, or `helper_exited`. */
    readonly code: number | string | null,
    readonly signal: string | null,
    readonly stdout: string,
    readonly stderr: string,
  ) {
    super(message);
  }
}

/** Request and reply on the helper's IPC channel (both ends validate them). */
export const helperRequestSchema = z.object({
  id: z.number().int(),
  file: z.string().min(1),
  args: z.array(z.string()),
  cwd: z.string().optional(),
  env: z.record(z.string(), z.string()).optional(),
  timeoutMs: z.number().int().nonnegative().optional(),
  maxBuffer: z.number().int().positive().optional(),
});
export type HelperRequest = z.infer<typeof helperRequestSchema>;

export const helperReplySchema = z.object({
  id: z.number().int(),
  ok: z.boolean(),
  stdout: z.string(),
  stderr: z.string(),
  code: z.union([z.number(), z.string(), z.null()]),
  signal: z.string().nullable(),
  message: z.string(),
});
export type HelperReply = z.infer<typeof helperReplySchema>;
/**
 * A long command whose output streams back (the local sandbox driver's commands). It runs in its
 * own process group (its pid is the group id), so the worker kills the whole group directly.
 */
export const helperSpawnRequestSchema = z.object({
  kind: z.literal('spawn'),
  id: z.number().int(),
  file: z.string().min(1),
  args: z.array(z.string()),
  cwd: z.string().min(1),
  env: z.record(z.string(), z.string()),
  uid: z.number().int().nonnegative().optional(),
  gid: z.number().int().nonnegative().optional(),
});
export type HelperSpawnRequest = z.infer<typeof helperSpawnRequestSchema>;
/** The worker took a chunk of output: the helper reads the next one (backpressure end to end). */
export const helperAckSchema = z.object({ kind: z.literal('ack'), id: z.number().int() });

/** What the helper says about a spawned command: started, a chunk of output, exited. */
export const helperStreamEventSchema = z.discriminatedUnion('event', [
  z.object({ id: z.number().int(), event: z.literal('started'), pid: z.number().int().positive() }),
  z.object({
    id: z.number().int(),
    event: z.literal('output'),
    data: z.custom<Uint8Array<ArrayBufferLike>>((v) => v instanceof Uint8Array, 'bytes'),
  }),
  z.object({
    id: z.number().int(),
    event: z.literal('exit'),
    code: z.number().int().nullable(),
    signal: z.string().nullable(),
    /** Set when the program could not be started (e.g. `ENOENT`). */
    spawnError: z.object({ message: z.string(), code: z.string().nullable() }).optional(),
  }),
]);
export type HelperStreamEvent = z.infer<typeof helperStreamEventSchema>;

/** How a spawned command ended. */
export interface SpawnedExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The program could not be started. */
  spawnError?: { message: string; code: string | null };
}

export interface SpawnGroupOptions {
  cwd: string;
  env: Record<string, string>;
  uid?: number;
  gid?: number;
  /** Takes each chunk of stdout and stderr (interleaved); the next chunk is read once it settles. */
  output: (chunk: Buffer) => Promise<void>;
}

/** A command started in its own process group. */
export interface SpawnedGroup {
  /** Its pid, which is also its process group id; undefined when it could not be started. */
  readonly pid: Promise<number | undefined>;
  /**
   * Resolves once it exited and its output was read; rejects (`helper_exited`) when the helper
   * was lost while it ran: the command's group may still be running then, and the caller kills it.
   */
  readonly exited: Promise<SpawnedExit>;
}

/**
 * Spawns `file args` in its own process group, with its stdout and stderr read chunk by chunk into
 * `opts.output` (a chunk is read only after the last one settled). `emit` receives the stream's
 * events; the helper sends them over IPC, the direct path calls back in-process.
 */
export function spawnToEvents(
  req: HelperSpawnRequest,
  emit: (event: HelperStreamEvent, read: () => void) => void,
): void {
  let child: ChildProcess;
  const exit = (e: Omit<Extract<HelperStreamEvent, { event: 'exit' }>, 'id' | 'event'>): void =>
    emit({ id: req.id, event: 'exit', ...e }, () => undefined);
  try {
    child = spawn(req.file, req.args, {
      cwd: req.cwd,
      env: req.env,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(req.uid !== undefined ? { uid: req.uid } : {}),
      ...(req.gid !== undefined ? { gid: req.gid } : {}),
    });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    exit({ code: null, signal: null, spawnError: { message: e.message, code: e.code ?? null } });
    return;
  }
  let spawnError: NodeJS.ErrnoException | undefined;
  child.on('error', (err: NodeJS.ErrnoException) => {
    spawnError = err;
  });
  if (child.pid !== undefined) emit({ id: req.id, event: 'started', pid: child.pid }, () => undefined);
  for (const stream of [child.stdout, child.stderr]) {
    stream?.on('data', (chunk: Buffer) => {
      stream.pause();
      emit({ id: req.id, event: 'output', data: chunk }, () => stream.resume());
    });
  }
  child.on('close', (code, signal) => {
    exit(
      spawnError
        ? {
            code: null,
            signal: null,
            spawnError: { message: spawnError.message, code: spawnError.code ?? null },
          }
        : { code, signal },
    );
  });
}

/** The helper's first message. */
export const HELPER_READY = 'choiros-process-helper-ready';

const DEFAULT_MAX_BUFFER = 16 * 1024 * 1024;
/** Extra time the worker gives a call past its own timeout before it stops waiting for the helper. */
const REPLY_GRACE_MS = 10_000;
/** After a helper failed to start, calls run directly for this long before a new helper is tried. */
const DIRECT_AFTER_FAILED_START_MS = 60_000;

/** Runs `file args` with execFile semantics and turns the outcome into a reply (used by the helper). */
export function execToReply(req: HelperRequest): Promise<HelperReply> {
  return new Promise((resolve) => {
    execFile(
      req.file,
      req.args,
      {
        cwd: req.cwd,
        env: req.env ?? process.env,
        timeout: req.timeoutMs ?? 0,
        maxBuffer: req.maxBuffer ?? DEFAULT_MAX_BUFFER,
        encoding: 'utf8',
      },
      (err, stdout, stderr) => {
        const e = err as (Error & { code?: number | string | null; signal?: string | null }) | null;
        resolve({
          id: req.id,
          ok: e === null,
          stdout,
          stderr,
          code: e ? (e.code ?? null) : 0,
          signal: e?.signal ?? null,
          message: e?.message ?? '',
        });
      },
    );
  });
}

const replyToResult = (reply: HelperReply): RunProcessResult => {
  if (reply.ok) return { stdout: reply.stdout, stderr: reply.stderr };
  throw new ProcessError(reply.message, reply.code, reply.signal, reply.stdout, reply.stderr);
};

interface Pending {
  req: HelperRequest;
  resolve: (r: RunProcessResult) => void;
  reject: (e: Error) => void;
  timer?: NodeJS.Timeout;
  what: string;
}

interface Stream {
  req: HelperSpawnRequest;
  what: string;
  output: (chunk: Buffer) => Promise<void>;
  started: (pid: number | undefined) => void;
  resolve: (exit: SpawnedExit) => void;
  reject: (e: Error) => void;
  /** Output still being handed to `output`; the exit waits for it. */
  writing: Promise<void>;
}

/** One helper child process and the calls in flight on it. */
export class ProcessHelper {
  private child: ChildProcess | undefined;
  private readonly pending = new Map<number, Pending>();
  private readonly streams = new Map<number, Stream>();
  private nextId = 1;
  private started = 0;
  private ready = false;
  private directUntil = 0;

  private readonly childModule: string;
  private readonly warn: (message: string) => void;

  constructor(
    opts: {
      /** The helper's module (tests point it elsewhere). */
      childModule?: string;
      /** Told when the helper cannot start; a process warning by default. */
      warn?: (message: string) => void;
    } = {},
  ) {
    this.childModule = opts.childModule ?? join(__dirname, 'process-helper-child.ts');
    this.warn = opts.warn ?? ((m) => process.emitWarning(m, { code: 'CHOIROS_PROCESS_HELPER' }));
  }

  /** How many helper processes this instance has started (1 unless one died). */
  get starts(): number {
    return this.started;
  }

  /** The helper's pid, when one is running. */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  run(file: string, args: string[], opts: RunProcessOptions = {}): Promise<RunProcessResult> {
    const child = this.ensureChild();
    const req: HelperRequest = {
      id: this.nextId++,
      file,
      args,
      cwd: opts.cwd,
      env: opts.env ? stringEnv(opts.env) : undefined,
      timeoutMs: opts.timeoutMs,
      maxBuffer: opts.maxBuffer,
    };
    if (!child) return execToReply(req).then(replyToResult);
    return new Promise<RunProcessResult>((resolve, reject) => {
      const entry: Pending = { req, resolve, reject, what: `${file} ${args.join(' ')}`.slice(0, 200) };
      if (opts.timeoutMs) {
        entry.timer = setTimeout(() => {
          this.pending.delete(req.id);
          this.updateRef();
          reject(
            new ProcessError(
              `process helper gave no answer for ${entry.what} within ${opts.timeoutMs! + REPLY_GRACE_MS} ms`,
              'helper_timeout',
              null,
              '',
              '',
            ),
          );
        }, opts.timeoutMs + REPLY_GRACE_MS);
      }
      this.pending.set(req.id, entry);
      this.updateRef();
      child.send(req, (err) => {
        if (err) this.settle(req.id, (p) => p.reject(helperLost(p.what, `could not send: ${err.message}`)));
      });
    });
  }

  /**
   * Starts a long command in its own process group from the helper (see SpawnedGroup). Without a
   * helper (it could not start) the command is spawned here directly, with the same semantics.
   */
  spawnGroup(file: string, args: string[], opts: SpawnGroupOptions): SpawnedGroup {
    const req: HelperSpawnRequest = {
      kind: 'spawn',
      id: this.nextId++,
      file,
      args,
      cwd: opts.cwd,
      env: opts.env,
      uid: opts.uid,
      gid: opts.gid,
    };
    const child = this.ensureChild();
    let started!: (pid: number | undefined) => void;
    const pid = new Promise<number | undefined>((r) => (started = r));
    if (!child) return { pid, exited: spawnDirect(req, opts.output, started) };
    const exited = new Promise<SpawnedExit>((resolve, reject) => {
      this.streams.set(req.id, {
        req,
        what: `${file} ${args.join(' ')}`.slice(0, 200),
        output: opts.output,
        started,
        resolve: (e) => {
          started(undefined);
          resolve(e);
        },
        reject: (e) => {
          started(undefined);
          reject(e);
        },
        writing: Promise.resolve(),
      });
      this.updateRef();
      child.send(req, (err) => {
        if (err)
          this.settleStream(req.id, (st) => st.reject(helperLost(st.what, `could not send: ${err.message}`)));
      });
    });
    return { pid, exited };
  }

  private onStreamEvent(child: ChildProcess, ev: HelperStreamEvent): void {
    const st = this.streams.get(ev.id);
    if (!st) return;
    if (ev.event === 'started') {
      st.started(ev.pid);
    } else if (ev.event === 'output') {
      const chunk = Buffer.from(ev.data.buffer, ev.data.byteOffset, ev.data.byteLength);
      st.writing = st.writing
        .then(() => st.output(chunk))
        .catch(() => undefined)
        .then(() => {
          if (this.child === child) child.send({ kind: 'ack', id: ev.id });
        });
    } else {
      const exit: SpawnedExit = {
        code: ev.code,
        signal: ev.signal as NodeJS.Signals | null,
        ...(ev.spawnError ? { spawnError: ev.spawnError } : {}),
      };
      void st.writing.then(() => this.settleStream(ev.id, (s) => s.resolve(exit)));
    }
  }

  private settleStream(id: number, fn: (st: Stream) => void): void {
    const st = this.streams.get(id);
    if (!st) return;
    this.streams.delete(id);
    this.updateRef();
    fn(st);
  }

  /** Stops the helper (calls in flight fail). */
  close(): void {
    const child = this.child;
    this.child = undefined;
    child?.kill('SIGKILL');
    this.failAll('the process helper was closed');
  }

  private ensureChild(): ChildProcess | undefined {
    if (this.child) return this.child;
    if (Date.now() < this.directUntil) return undefined;
    let child: ChildProcess;
    try {
      child = fork(this.childModule, [], {
        // The helper is TypeScript like the rest; tsx's require hook works from any cwd.
        execArgv: ['--require', require.resolve('tsx/cjs')],
        serialization: 'advanced',
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      });
    } catch {
      return undefined;
    }
    this.started++;
    this.child = child;
    this.ready = false;
    child.on('message', (msg: unknown) => {
      if (msg === HELPER_READY) {
        this.ready = true;
        return;
      }
      if (typeof msg === 'object' && msg !== null && 'event' in msg) {
        const ev = helperStreamEventSchema.safeParse(msg);
        if (ev.success) this.onStreamEvent(child, ev.data);
        return;
      }
      const parsed = helperReplySchema.safeParse(msg);
      if (!parsed.success) return;
      const reply = parsed.data;
      this.settle(reply.id, (p) => {
        try {
          p.resolve(replyToResult(reply));
        } catch (err) {
          p.reject(err as Error);
        }
      });
    });
    const lost = (why: string): void => {
      if (this.child !== child) return;
      this.child = undefined;
      if (this.ready) {
        this.failAll(why);
        return;
      }
      // It never started: nothing it was sent has run. Run those calls here, and the next ones too
      // for a while, rather than fail every git call of every run.
      this.directUntil = Date.now() + DIRECT_AFTER_FAILED_START_MS;
      this.warn(`${why} before it was ready; running programs from the worker directly`);
      for (const id of [...this.pending.keys()]) {
        this.settle(id, (p) => {
          execToReply(p.req).then(replyToResult).then(p.resolve, p.reject);
        });
      }
      for (const id of [...this.streams.keys()]) {
        this.settleStream(id, (st) => {
          spawnDirect(st.req, st.output, st.started).then(st.resolve, st.reject);
        });
      }
    };
    child.on('error', (err) => lost(`process helper failed: ${err.message}`));
    child.on('exit', (code, signal) =>
      lost(`process helper exited (${signal ? `signal ${signal}` : `code ${String(code)}`})`),
    );
    this.updateRef();
    return child;
  }

  private settle(id: number, fn: (p: Pending) => void): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (p.timer) clearTimeout(p.timer);
    this.updateRef();
    fn(p);
  }

  private failAll(why: string): void {
    for (const id of [...this.pending.keys()]) this.settle(id, (p) => p.reject(helperLost(p.what, why)));
    for (const id of [...this.streams.keys()])
      this.settleStream(id, (st) => st.reject(helperLost(st.what, why)));
  }

  /** The helper keeps the worker alive only while calls are in flight on it. */
  private updateRef(): void {
    const child = this.child;
    if (!child) return;
    const channel = child.channel as { ref(): void; unref(): void } | null | undefined;
    if (this.pending.size > 0 || this.streams.size > 0) {
      child.ref();
      channel?.ref();
    } else {
      child.unref();
      channel?.unref();
    }
  }
}

/** spawnGroup without a helper: the same events, handled in this process. */
function spawnDirect(
  req: HelperSpawnRequest,
  output: (chunk: Buffer) => Promise<void>,
  started: (pid: number | undefined) => void,
): Promise<SpawnedExit> {
  return new Promise((resolve) => {
    let writing = Promise.resolve();
    spawnToEvents(req, (ev, read) => {
      if (ev.event === 'started') started(ev.pid);
      else if (ev.event === 'output') {
        const chunk = Buffer.from(ev.data.buffer, ev.data.byteOffset, ev.data.byteLength);
        writing = writing
          .then(() => output(chunk))
          .catch(() => undefined)
          .then(read);
      } else {
        void writing.then(() => {
          started(undefined);
          resolve({
            code: ev.code,
            signal: ev.signal as NodeJS.Signals | null,
            ...(ev.spawnError ? { spawnError: ev.spawnError } : {}),
          });
        });
      }
    });
  });
}

const helperLost = (what: string, why: string): ProcessError =>
  new ProcessError(`${why} while running ${what}`, 'helper_exited', null, '', '');

const stringEnv = (env: NodeJS.ProcessEnv): Record<string, string> =>
  Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => typeof e[1] === 'string'));

let shared: ProcessHelper | undefined;

/** Runs a program through the worker's shared process helper (started on first use). */
export function runProcess(
  file: string,
  args: string[],
  opts: RunProcessOptions = {},
): Promise<RunProcessResult> {
  shared ??= new ProcessHelper();
  return shared.run(file, args, opts);
}

/** Starts a long command in its own process group through the worker's shared process helper. */
export function spawnGroup(file: string, args: string[], opts: SpawnGroupOptions): SpawnedGroup {
  shared ??= new ProcessHelper();
  return shared.spawnGroup(file, args, opts);
}
