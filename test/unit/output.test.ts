/** Bounded output capture: the tail stays bounded while size and digest cover everything. */
import { createHash } from 'node:crypto';
import { BoundedOutput } from '../../activities/sandbox/output';

describe('BoundedOutput', () => {
  test('when output exceeds the tail bound, then only the tail is kept but the digest covers all of it', () => {
    const out = new BoundedOutput(16);
    const chunks = ['0123456789', 'abcdefghij', 'KLMNOPQRST'].map((s) => Buffer.from(s));
    chunks.forEach((c) => out.push(c));
    const r = out.finish();
    expect(r.outputBytes).toBe(30);
    expect(r.outputTail).toBe('efghijKLMNOPQRST');
    expect(r.outputSha256).toBe(createHash('sha256').update(Buffer.concat(chunks)).digest('hex'));
  });

  test('when one chunk is larger than the bound, then the tail is its end', () => {
    const out = new BoundedOutput(4);
    out.push(Buffer.from('abcdefgh'));
    expect(out.finish().outputTail).toBe('efgh');
  });

  test('when the tail starts inside a multi-byte character, then the partial bytes are dropped', () => {
    const out = new BoundedOutput(4);
    out.push(Buffer.from('xxé€')); // é = 2 bytes, € = 3 bytes; the last 4 bytes start inside é
    expect(out.finish().outputTail).toBe('€');
  });
});
