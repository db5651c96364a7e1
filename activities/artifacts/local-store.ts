/** Local content-addressed artifact store: `<dir>/sha256/<ab>/<digest>`, written via temp file + rename. */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  ArtifactError,
  DIGEST_PATTERN,
  type ArtifactStore,
  type ArtifactWriter,
  type PutOptions,
  type PutResult,
} from './store';

function checkDigest(digest: string): void {
  if (!DIGEST_PATTERN.test(digest))
    throw new ArtifactError('invalid_digest', `not a sha256 digest: ${digest}`);
}

export class LocalArtifactStore implements ArtifactStore {
  constructor(private readonly dir: string) {}

  /** Where a blob lives; two-character fan-out keeps directories small. */
  pathOf(digest: string): string {
    checkDigest(digest);
    return join(this.dir, 'sha256', digest.slice(0, 2), digest);
  }

  async writer(opts: PutOptions = {}): Promise<ArtifactWriter> {
    const tmpDir = join(this.dir, 'tmp');
    await mkdir(tmpDir, { recursive: true });
    const tmp = join(tmpDir, `${randomUUID()}.part`);
    const file = createWriteStream(tmp, { flags: 'wx', mode: 0o640 });
    const hash = createHash('sha256');
    const max = opts.maxBytes ?? Number.POSITIVE_INFINITY;
    let size = 0;
    let seen = 0;
    let settled = false;
    const fileClosed = new Promise<void>((resolve, reject) => {
      file.on('close', resolve);
      file.on('error', reject);
    });
    // A write error (disk full) surfaces through finish(), never as an unhandled rejection, and it
    // fails the writable at once instead of leaving it waiting for a 'drain' that never comes.
    fileClosed.catch(() => undefined);
    // Bytes beyond the bound are consumed and counted, never stored: a noisy command cannot fill the disk.
    const stream = new Writable({
      write(chunk: Buffer, _enc, cb) {
        seen += chunk.length;
        const room = max - size;
        if (room <= 0) return cb();
        const part = chunk.length > room ? chunk.subarray(0, room) : chunk;
        size += part.length;
        hash.update(part);
        if (file.write(part)) cb();
        else file.once('drain', () => cb());
      },
      destroy(err, cb) {
        file.destroy();
        cb(err);
      },
      final(cb) {
        file.end(() => cb());
      },
    });
    file.on('error', (err) => stream.destroy(err));
    const cleanup = async (): Promise<void> => {
      file.destroy();
      await rm(tmp, { force: true });
    };
    const commit = async (): Promise<PutResult> => {
      if (!stream.writableFinished) {
        await new Promise<void>((resolve, reject) => {
          stream.once('error', reject);
          stream.end(() => resolve());
        });
      }
      await fileClosed;
      const digest = hash.digest('hex');
      if (opts.expectedDigest !== undefined && opts.expectedDigest !== digest) {
        throw new ArtifactError('digest_mismatch', `expected ${opts.expectedDigest}, got ${digest}`);
      }
      const final = this.pathOf(digest);
      await mkdir(join(final, '..'), { recursive: true });
      // rename is atomic within a file system; an existing blob with this name has these same bytes.
      await rename(tmp, final);
      return { digest, size, truncated: seen > size };
    };
    return {
      stream,
      finish: async () => {
        if (settled) throw new Error('artifact writer already finished');
        settled = true;
        try {
          return await commit();
        } catch (err) {
          await cleanup(); // no .part file outlives a failed commit
          throw err;
        }
      },
      abort: async () => {
        settled = true;
        stream.destroy();
        await cleanup();
      },
    };
  }

  async put(source: Uint8Array | Readable, opts: PutOptions = {}): Promise<PutResult> {
    const w = await this.writer(opts);
    try {
      await pipeline(source instanceof Uint8Array ? Readable.from([Buffer.from(source)]) : source, w.stream);
      return await w.finish();
    } catch (err) {
      await w.abort();
      throw err;
    }
  }

  async get(digest: string): Promise<Readable> {
    const path = this.pathOf(digest);
    if (!(await this.has(digest))) throw new ArtifactError('not_found', `no artifact ${digest}`);
    const hash = createHash('sha256');
    const verify = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        hash.update(chunk);
        cb(null, chunk);
      },
      flush(cb) {
        const got = hash.digest('hex');
        cb(
          got === digest ? null : new ArtifactError('digest_mismatch', `artifact ${digest} hashes to ${got}`),
        );
      },
    });
    // A read error ends the returned stream with that error instead of leaving it open.
    return createReadStream(path)
      .on('error', (err) => verify.destroy(err))
      .pipe(verify);
  }

  async getBytes(digest: string): Promise<Buffer> {
    const path = this.pathOf(digest);
    let bytes: Buffer;
    try {
      bytes = await readFile(path);
    } catch (err) {
      throw new ArtifactError('not_found', `no artifact ${digest}`, { cause: err });
    }
    const got = createHash('sha256').update(bytes).digest('hex');
    if (got !== digest) throw new ArtifactError('digest_mismatch', `artifact ${digest} hashes to ${got}`);
    return bytes;
  }

  async has(digest: string): Promise<boolean> {
    return stat(this.pathOf(digest)).then(
      (s) => s.isFile(),
      () => false,
    );
  }
}
