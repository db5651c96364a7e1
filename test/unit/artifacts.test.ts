/** The local content-addressed artifact store and the verdict rule, on a real temp directory. */
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { canonicalJson, checkVerdict, verdictOf, type VerifierReport } from '../../contracts';
import { LocalArtifactStore } from '../../activities/artifacts/local-store';
import { ArtifactError } from '../../activities/artifacts/store';
import { verdictFromStore } from '../../worker/verdict-cli';

const sha = (b: string | Buffer): string => createHash('sha256').update(b).digest('hex');

let dir: string;
let store: LocalArtifactStore;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'choiros-artifacts-'));
  store = new LocalArtifactStore(dir);
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function collect(r: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r as AsyncIterable<Buffer>) parts.push(c);
  return Buffer.concat(parts);
}

describe('LocalArtifactStore', () => {
  test('when bytes are put, then they are named by their sha256 and read back verified', async () => {
    const r = await store.put(Buffer.from('hello'));
    expect(r).toEqual({ digest: sha('hello'), size: 5, truncated: false });
    expect(await store.has(r.digest)).toBe(true);
    expect((await store.getBytes(r.digest)).toString()).toBe('hello');
    expect((await collect(await store.get(r.digest))).toString()).toBe('hello');
    expect(await readdir(join(dir, 'tmp'))).toEqual([]);
  });

  test('when a stream of several MiB is put, then the digest covers all of it', async () => {
    const chunks = Array.from({ length: 40 }, (_, i) => Buffer.alloc(100_000, i));
    const r = await store.put(Readable.from(chunks));
    expect(r.digest).toBe(sha(Buffer.concat(chunks)));
    expect(r.size).toBe(4_000_000);
  });

  test('when the source exceeds maxBytes, then only the head is stored and it says truncated', async () => {
    const r = await store.put(Buffer.from('0123456789'), { maxBytes: 4 });
    expect(r).toEqual({ digest: sha('0123'), size: 4, truncated: true });
  });

  test('when an expected digest does not match, then nothing is stored', async () => {
    await expect(store.put(Buffer.from('abc'), { expectedDigest: sha('xyz') })).rejects.toMatchObject({
      code: 'digest_mismatch',
    });
    expect(await store.has(sha('abc'))).toBe(false);
    expect(await readdir(join(dir, 'tmp'))).toEqual([]);
  });

  test('when the same bytes are put concurrently, then one blob results', async () => {
    const rs = await Promise.all(Array.from({ length: 5 }, () => store.put(Buffer.from('same'))));
    expect(new Set(rs.map((r) => r.digest)).size).toBe(1);
    expect(await readdir(join(dir, 'sha256', sha('same').slice(0, 2)))).toEqual([sha('same')]);
  });

  test('when a stored blob is altered on disk, then reads fail with digest_mismatch', async () => {
    const r = await store.put(Buffer.from('original'));
    await writeFile(store.pathOf(r.digest), 'tampered');
    await expect(store.getBytes(r.digest)).rejects.toMatchObject({ code: 'digest_mismatch' });
    await expect(collect(await store.get(r.digest))).rejects.toBeInstanceOf(ArtifactError);
  });

  test('when the digest is not 64 hex characters, then it is refused before touching the disk', async () => {
    await expect(store.getBytes('../../etc/passwd')).rejects.toMatchObject({ code: 'invalid_digest' });
    await expect(store.getBytes(sha('missing'))).rejects.toMatchObject({ code: 'not_found' });
  });
});

describe('verdicts', () => {
  test.each([
    [{ exitCode: 0, timedOut: false }, 'pass'],
    [{ exitCode: 1, timedOut: false }, 'fail'],
    [{ exitCode: 124, timedOut: true }, 'timeout'],
    [{ exitCode: 0, timedOut: false, oomKilled: true }, 'fail'],
  ] as const)('when the outcome is %j, then the verdict is %s', (o, expected) => {
    expect(verdictOf(o)).toBe(expected);
  });

  const report = (log: string, over: Partial<VerifierReport> = {}): VerifierReport => ({
    kind: 'choiros.verifier.report',
    version: 1,
    runId: 'r1',
    verifierId: 'V-1',
    argv: ['true'],
    timeoutSeconds: 10,
    exitCode: 0,
    timedOut: false,
    oomKilled: false,
    durationMs: 5,
    outputSha256: sha(log),
    outputBytes: log.length,
    log: { digest: sha(log), bytes: log.length, truncated: false },
    ...over,
  });

  test('when the stored log is missing, then the verdict is error even for exit 0', () => {
    expect(checkVerdict(report('x'), undefined)).toMatchObject({ result: 'error' });
  });

  test('when report and store agree, then the verdict follows the exit code', async () => {
    const log = await store.put(Buffer.from('all good\n'));
    const ok = await store.put(Buffer.from(canonicalJson(report('all good\n'))));
    expect(log.digest).toBe(sha('all good\n'));
    expect(await verdictFromStore(store, ok.digest)).toMatchObject({ result: 'pass', problems: [] });
    const failing = await store.put(Buffer.from(canonicalJson(report('all good\n', { exitCode: 3 }))));
    expect(await verdictFromStore(store, failing.digest)).toMatchObject({ result: 'fail' });
  });

  test('when the log was tampered with, then the recomputed verdict is error', async () => {
    const log = await store.put(Buffer.from('all good\n'));
    const rep = await store.put(Buffer.from(canonicalJson(report('all good\n'))));
    await writeFile(store.pathOf(log.digest), 'all bad\n');
    expect(await verdictFromStore(store, rep.digest)).toMatchObject({ result: 'error' });
  });

  test('when the report digest names no report, then the verdict is error', async () => {
    const notReport = await store.put(Buffer.from('{"hello":1}'));
    expect(await verdictFromStore(store, notReport.digest)).toMatchObject({ result: 'error' });
    expect(await verdictFromStore(store, sha('nothing'))).toMatchObject({ result: 'error' });
  });
});
