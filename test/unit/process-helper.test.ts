/**
 * The process helper (activities/workspace/process-helper.ts) with real child processes: programs run
 * in the helper, not in the test process; outcomes keep execFile's meaning (exit codes, spawn
 * errors, timeouts, output limits); a helper that dies fails only the calls it was running and is
 * replaced; one that cannot start leaves calls running directly; it ignores group signals, and it
 * never keeps its parent alive once idle.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { ProcessError, ProcessHelper } from '../../activities/workspace/process-helper';

const helpers: ProcessHelper[] = [];
const helper = (...args: ConstructorParameters<typeof ProcessHelper>): ProcessHelper => {
  const h = new ProcessHelper(...args);
  helpers.push(h);
  return h;
};
afterEach(() => {
  for (const h of helpers.splice(0)) h.close();
});

const failure = async (p: Promise<unknown>): Promise<ProcessError> => {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(ProcessError);
    return err as ProcessError;
  }
  throw new Error('expected the call to fail');
};

test('a program runs in the helper process with the given cwd and env, and answers stdout and stderr', async () => {
  const h = helper();
  const out = await h.run('sh', ['-c', 'echo "$PPID $PWD $ONLY"; echo warn >&2'], {
    cwd: '/tmp',
    env: { ONLY: 'this', PATH: process.env.PATH },
  });
  const [ppid, cwd, only] = out.stdout.trim().split(' ');
  expect(Number(ppid)).toBe(h.pid);
  expect(Number(ppid)).not.toBe(process.pid);
  expect([cwd, only, out.stderr]).toEqual(['/tmp', 'this', 'warn\n']);
});

test('many concurrent calls share one helper and each gets its own answer', async () => {
  const h = helper();
  const outs = await Promise.all(
    Array.from({ length: 25 }, (_, i) => h.run('sh', ['-c', `sleep 0.0${i % 10}; echo ${i}`])),
  );
  expect(outs.map((o) => o.stdout.trim())).toEqual(Array.from({ length: 25 }, (_, i) => String(i)));
  expect(h.starts).toBe(1);
});

test('exit codes, missing programs, timeouts and output limits fail as ProcessError with their cause', async () => {
  const h = helper();
  const exit = await failure(h.run('sh', ['-c', 'echo partial; echo bad >&2; exit 3']));
  expect([exit.code, exit.signal, exit.stdout, exit.stderr]).toEqual([3, null, 'partial\n', 'bad\n']);

  const missing = await failure(h.run('choiros-no-such-program', []));
  expect(missing.code).toBe('ENOENT');

  const slow = await failure(h.run('sleep', ['5'], { timeoutMs: 200 }));
  expect(slow.signal).toBe('SIGTERM');

  const chatty = await failure(h.run('sh', ['-c', 'head -c 5000 /dev/zero'], { maxBuffer: 100 }));
  expect(chatty.code).toBe('ERR_CHILD_PROCESS_STDIO_MAXBUFFER');
  expect(h.starts).toBe(1);
});

test('a helper that dies fails the calls in flight on it, and the next call starts a new one', async () => {
  const h = helper();
  await h.run('true', []);
  const first = h.pid!;
  const inFlight = h.run('sleep', ['10']);
  await new Promise((r) => setTimeout(r, 200));
  process.kill(first, 'SIGKILL');
  const lost = await failure(inFlight);
  expect(lost.code).toBe('helper_exited');
  expect(lost.message).toMatch(/signal SIGKILL.*sleep 10/);

  expect((await h.run('echo', ['again'])).stdout).toBe('again\n');
  expect(h.starts).toBe(2);
  expect(h.pid).not.toBe(first);
});

test('the helper ignores SIGTERM and SIGINT (a process-group signal during a drain) and keeps serving', async () => {
  const h = helper();
  await h.run('true', []);
  const pid = h.pid!;
  const during = h.run('sh', ['-c', 'sleep 0.5; echo finished']);
  process.kill(pid, 'SIGTERM');
  process.kill(pid, 'SIGINT');
  expect((await during).stdout).toBe('finished\n');
  expect((await h.run('echo', ['still'])).stdout).toBe('still\n');
  expect([h.pid, h.starts]).toEqual([pid, 1]);
});

test('a helper that cannot start leaves calls running directly in the caller', async () => {
  const warnings: string[] = [];
  const h = helper({
    childModule: join(__dirname, 'no-such-helper-module.ts'),
    warn: (m) => warnings.push(m),
  });
  const out = await h.run('sh', ['-c', 'echo $PPID']);
  expect(Number(out.stdout.trim())).toBe(process.pid);
  expect((await h.run('echo', ['direct'])).stdout).toBe('direct\n');
  expect(h.starts).toBe(1);
  expect(warnings).toEqual([
    'process helper exited (code 1) before it was ready; running programs from the worker directly',
  ]);
});

test('an idle helper does not keep its parent process alive, and exits with it', async () => {
  const script = `
    const { ProcessHelper } = require(${JSON.stringify(join(__dirname, '../../activities/workspace/process-helper.ts'))});
    const h = new ProcessHelper();
    h.run('echo', ['ok']).then((r) => { process.stdout.write(String(h.pid) + ' ' + r.stdout); });
  `;
  const child = spawn(process.execPath, ['--require', require.resolve('tsx/cjs'), '-e', script], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number | null>((resolve, reject) => {
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error('the parent stayed alive with an idle helper'));
    }, 20_000);
    child.on('exit', (c) => {
      clearTimeout(t);
      resolve(c);
    });
  });
  expect(code).toBe(0);
  const [pid, answer] = out.trim().split(' ');
  expect(answer).toBe('ok');
  // The helper goes with it once its channel closes.
  const gone = async (): Promise<boolean> => {
    for (let i = 0; i < 50; i++) {
      try {
        process.kill(Number(pid), 0);
      } catch {
        return true;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    return false;
  };
  expect(await gone()).toBe(true);
});

/** Collects a spawned group's output, each chunk taken after `delayMs` (a slow consumer). */
const collect = (delayMs = 0) => {
  const chunks: Buffer[] = [];
  return {
    output: async (chunk: Buffer): Promise<void> => {
      chunks.push(chunk);
      if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
    },
    text: () => Buffer.concat(chunks).toString(),
    bytes: () => chunks.reduce((n, c) => n + c.length, 0),
    chunks,
  };
};

describe('spawnGroup: long commands with streamed output', () => {
  test('runs in the helper, leads its own process group, and streams stdout and stderr', async () => {
    const h = helper();
    const out = collect();
    const cmd = h.spawnGroup(
      'sh',
      ['-c', 'echo "$PPID $$ $(ps -o pgid= -p $$) $ONLY"; echo err >&2; exit 3'],
      {
        cwd: '/tmp',
        env: { ONLY: 'this', PATH: process.env.PATH ?? '' },
        output: out.output,
      },
    );
    const pid = await cmd.pid;
    const exit = await cmd.exited;
    expect(exit).toEqual({ code: 3, signal: null });
    const [ppid, self, pgid, only] = out.text().split('\n')[0]!.trim().split(/\s+/);
    expect(Number(ppid)).toBe(h.pid);
    expect([Number(self), Number(pgid)]).toEqual([pid, pid]);
    expect(only).toBe('this');
    expect(out.text()).toContain('err\n');
  });

  test('a slow consumer gets every byte, in order (the helper reads a chunk only after the last was taken)', async () => {
    const h = helper();
    const out = collect(2);
    const cmd = h.spawnGroup('sh', ['-c', 'seq 1 200000'], {
      cwd: '/tmp',
      env: { PATH: process.env.PATH ?? '' },
      output: out.output,
    });
    expect(await cmd.exited).toEqual({ code: 0, signal: null });
    const lines = out.text().trim().split('\n');
    expect(lines).toHaveLength(200000);
    expect(lines[0]).toBe('1');
    expect(lines[199999]).toBe('200000');
    expect(out.chunks.length).toBeGreaterThan(1);
  });

  test('a command writing much to stdout and stderr at once finishes, every byte of both read', async () => {
    // Both streams are paused while their chunk is with the worker: each ack must resume its own.
    const h = helper();
    const out = collect(1);
    const cmd = h.spawnGroup('sh', ['-c', 'seq 1 100000 >&2 & seq 100001 200000; wait'], {
      cwd: '/tmp',
      env: { PATH: process.env.PATH ?? '' },
      output: out.output,
    });
    expect(await cmd.exited).toEqual({ code: 0, signal: null });
    // Chunks of the two streams interleave (a line may be split between them): count bytes.
    const expected = Array.from({ length: 200000 }, (_, i) => `${i + 1}\n`).join('').length;
    expect(out.bytes()).toBe(expected);
  }, 60_000);

  test('a program that cannot start answers spawnError, and no pid', async () => {
    const h = helper();
    const cmd = h.spawnGroup('choiros-no-such-program', [], {
      cwd: '/tmp',
      env: {},
      output: collect().output,
    });
    const exit = await cmd.exited;
    expect(exit.spawnError?.code).toBe('ENOENT');
    expect(await cmd.pid).toBeUndefined();
  });

  test('the caller kills the whole group by its pid', async () => {
    const h = helper();
    const out = collect();
    const cmd = h.spawnGroup('sh', ['-c', 'sleep 30 & echo started; wait'], {
      cwd: '/tmp',
      env: { PATH: process.env.PATH ?? '' },
      output: out.output,
    });
    const pid = (await cmd.pid)!;
    while (!out.text().includes('started')) await new Promise((r) => setTimeout(r, 20));
    process.kill(-pid, 'SIGKILL');
    expect(await cmd.exited).toEqual({ code: null, signal: 'SIGKILL' });
  });

  test('a helper lost mid-command fails it with helper_exited; its group is still the caller’s to kill', async () => {
    const h = helper();
    const cmd = h.spawnGroup('sleep', ['30'], {
      cwd: '/tmp',
      env: { PATH: process.env.PATH ?? '' },
      output: collect().output,
    });
    const pid = (await cmd.pid)!;
    process.kill(h.pid!, 'SIGKILL');
    const lost = await failure(cmd.exited);
    expect(lost.code).toBe('helper_exited');
    // Detached from the helper: still running until the caller kills its group.
    expect(() => process.kill(pid, 0)).not.toThrow();
    process.kill(-pid, 'SIGKILL');
    // The next command starts a new helper.
    const out = collect();
    expect(
      await h.spawnGroup('echo', ['again'], { cwd: '/tmp', env: {}, output: out.output }).exited,
    ).toEqual({
      code: 0,
      signal: null,
    });
    expect(out.text()).toBe('again\n');
    expect(h.starts).toBe(2);
  });

  test('without a helper the command is spawned from the caller, with the same answers', async () => {
    const h = helper({ childModule: join(__dirname, 'no-such-helper-module.ts'), warn: () => undefined });
    const out = collect();
    const cmd = h.spawnGroup('sh', ['-c', 'echo $PPID; exit 2'], {
      cwd: '/tmp',
      env: { PATH: process.env.PATH ?? '' },
      output: out.output,
    });
    expect(await cmd.exited).toEqual({ code: 2, signal: null });
    expect(Number(out.text().trim())).toBe(process.pid);
  });
});
