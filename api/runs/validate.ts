/** Run request validation shared by the HTTP and gRPC front ends. */
import { AppError, idSchema, runRequestSchema, type RunRequest, type VerifierSpec } from '../../contracts';
import type { ZodType } from 'zod';
import { validationError } from '../errors';

/** Idempotency keys: 1-255 visible ASCII characters. */
const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/;

export function checkIdempotencyKey(key: string | undefined): void {
  if (key !== undefined && !IDEMPOTENCY_KEY.test(key)) {
    throw new AppError('validation_failed', 'Idempotency-Key must be 1-255 visible ASCII characters', {
      errors: [{ field: 'Idempotency-Key', message: 'must be 1-255 visible ASCII characters' }],
    });
  }
}

/** Validates a run request body; unknown verifier ids and an empty verifier list are refused here. */
export function parseRunRequest(
  body: unknown,
  verifiers: { get(id: string): VerifierSpec | undefined },
): RunRequest {
  const parsed = runRequestSchema.safeParse(body);
  if (!parsed.success) throw validationError(parsed.error);
  const unknown = parsed.data.workItem.requiredVerifiers.filter((id) => !verifiers.get(id));
  if (unknown.length > 0) {
    throw new AppError('unknown_verifier', `unknown verifier id(s): ${unknown.join(', ')}`, {
      errors: unknown.map((id) => ({
        field: 'workItem.requiredVerifiers',
        message: `unknown verifier ${id}`,
      })),
    });
  }
  if (parsed.data.workItem.requiredVerifiers.length === 0) {
    throw new AppError(
      'validation_failed',
      'workItem.requiredVerifiers: at least one verifier is needed to verify a run',
      {
        errors: [
          { field: 'workItem.requiredVerifiers', message: 'at least one verifier is needed to verify a run' },
        ],
      },
    );
  }
  return parsed.data;
}

/** An optional JSON body checked against `schema` (an absent body is `{}`); 400 naming the field otherwise. */
export function parseBody<T>(schema: ZodType<T>, body: unknown): T {
  const parsed = schema.safeParse(body ?? {});
  if (!parsed.success) throw validationError(parsed.error);
  return parsed.data;
}

/** A run id from a path or message field; 400 naming `field` otherwise. */
export function parseRunId(raw: unknown, field: string): string {
  const runId = idSchema.safeParse(raw);
  if (!runId.success) throw validationError(runId.error, field);
  return runId.data;
}
