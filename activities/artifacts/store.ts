/** The artifact store interface: immutable blobs named by their sha256, local now, S3-compatible later. */
import type { Readable, Writable } from 'node:stream';

/** Lower-case hex sha256: the only name an artifact has. */
export const DIGEST_PATTERN = /^[0-9a-f]{64}$/;

export interface PutResult {
  /** sha256 of the bytes stored. */
  digest: string;
  /** Bytes stored. */
  size: number;
  /** True when the source was longer than `maxBytes` and only its first `maxBytes` were stored. */
  truncated: boolean;
}

export interface PutOptions {
  /** Store at most this many bytes; the rest of the source is read and dropped (and counted). */
  maxBytes?: number;
  /** When given, the put fails (and stores nothing) unless the stored bytes hash to it. */
  expectedDigest?: string;
}

/** A streaming upload: write to `stream`, then `finish()` (after the stream is ended) or `abort()`. */
export interface ArtifactWriter {
  readonly stream: Writable;
  /** Ends the stream if still open and commits the blob; resolves to its digest. */
  finish(): Promise<PutResult>;
  /** Drops what was written; nothing becomes visible. */
  abort(): Promise<void>;
}

/**
 * Content-addressed storage. Puts are atomic (a reader never sees a partial blob) and idempotent
 * (the same bytes give the same digest and one blob). An S3-compatible store implements this with
 * a multipart upload to a temporary key and a copy to `sha256/<digest>`; nothing here assumes a
 * file system.
 */
export interface ArtifactStore {
  /** Opens a streaming upload. */
  writer(opts?: PutOptions): Promise<ArtifactWriter>;
  /** Stores bytes or a whole stream. */
  put(source: Uint8Array | Readable, opts?: PutOptions): Promise<PutResult>;
  /** Streams a blob; the stream errors if the stored bytes no longer hash to `digest`. */
  get(digest: string): Promise<Readable>;
  /** Reads a whole blob, verifying its digest. */
  getBytes(digest: string): Promise<Buffer>;
  has(digest: string): Promise<boolean>;
}

/** Typed failures of a store; `code` narrows in a switch. */
export class ArtifactError extends Error {
  override readonly name = 'ArtifactError';
  constructor(
    readonly code: 'not_found' | 'digest_mismatch' | 'invalid_digest',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
