/** Bounded capture of a command's output: total size and sha256 of everything, a short tail kept. */
import { createHash, type Hash } from 'node:crypto';
import { Writable } from 'node:stream';

export const DEFAULT_TAIL_BYTES = 8 * 1024;

export class BoundedOutput {
  private readonly hash: Hash = createHash('sha256');
  private tail: Buffer = Buffer.alloc(0);
  private total = 0;

  constructor(private readonly tailBytes = DEFAULT_TAIL_BYTES) {}

  push(chunk: Buffer): void {
    this.hash.update(chunk);
    this.total += chunk.length;
    const kept = chunk.length > this.tailBytes ? chunk.subarray(chunk.length - this.tailBytes) : chunk;
    const joined = Buffer.concat([this.tail, kept]);
    this.tail =
      joined.length > this.tailBytes ? Buffer.from(joined.subarray(joined.length - this.tailBytes)) : joined;
  }

  /** A writable that feeds this capture (for stream demultiplexing), and `tee` with backpressure. */
  writable(tee?: Writable): Writable {
    return new Writable({
      write: (chunk: Buffer, _enc, cb) => {
        this.push(chunk);
        if (!tee || tee.write(chunk)) cb();
        else tee.once('drain', () => cb());
      },
    });
  }

  get bytes(): number {
    return this.total;
  }

  finish(): { outputTail: string; outputSha256: string; outputBytes: number } {
    // Drop a partial UTF-8 sequence cut at the start of the tail.
    let start = 0;
    while (start < this.tail.length && start < 4 && ((this.tail[start] ?? 0) & 0xc0) === 0x80) start += 1;
    return {
      outputTail: this.tail.subarray(start).toString('utf8'),
      outputSha256: this.hash.copy().digest('hex'),
      outputBytes: this.total,
    };
  }
}
