/** Strict identifier rules: every id that reaches a NATS subject, a path, a container name or a workflow id. */
import { z } from 'zod';

/** The one pattern every externally influenced id must match (design.md, "Identity and authorisation"). */
export const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

/** zod schema for a strict id. */
export const idSchema = z.string().regex(ID_PATTERN, 'must be 1-64 characters of A-Z, a-z, 0-9, "_" or "-"');

/** True when `value` is a strict id. */
export function isValidId(value: unknown): value is string {
  return typeof value === 'string' && ID_PATTERN.test(value);
}

/**
 * Git ref names we accept as a base ref: a conservative subset of git-check-ref-format.
 * Never starts with "-" (no option injection), no "..", no "@{", no trailing "/" or ".lock".
 */
export const refSchema = z
  .string()
  .min(1)
  .max(200)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._/-]*$/, 'must be a branch, tag or commit name (A-Z a-z 0-9 . _ / -)')
  .refine((r) => !r.includes('..') && !r.includes('//') && !r.endsWith('/') && !r.endsWith('.lock'), {
    message: 'is not a valid git ref name',
  });
