/** Temporal client helpers shared by the run, graph and rebuild services. */
import * as grpc from '@grpc/grpc-js';
import {
  type Client,
  ServiceError,
  defaultGrpcRetryOptions,
  isGrpcServiceError,
  makeGrpcRetryInterceptor,
} from '@temporalio/client';
import { AppError } from '../contracts';

/** How long a view query may take before a service falls back to memo and search attributes. */
export const QUERY_TIMEOUT_MS = 3000;

/** gRPC UNAVAILABLE (14) and DEADLINE_EXCEEDED (4): Temporal cannot be reached right now. */
const UNREACHABLE_CODES = new Set([4, 14]);

/** Maps "Temporal is unreachable" to a 503 the client can retry; everything else passes through. */
export function mapTemporalError(err: unknown): unknown {
  const cause = err instanceof ServiceError && err.cause ? err.cause : err;
  if (isGrpcServiceError(cause) && UNREACHABLE_CODES.has(cause.code)) {
    return new AppError('service_unavailable', 'the workflow service is unavailable; retry later', {
      cause: err,
      headers: { 'Retry-After': '5' },
    });
  }
  return err;
}

/** Runs a service call with Temporal's unreachability mapped to a 503. */
export async function guarded<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw mapTemporalError(err);
  }
}

/**
 * `guarded`, with every Temporal call `fn` makes sharing one deadline `deadlineMs` away (the
 * connection's call context), so a request that makes several calls answers 503 in about that
 * time when Temporal is unreachable, instead of once per call.
 */
export function guardedWithin(
  client: Pick<Client, 'withDeadline'>,
  deadlineMs: number | undefined,
): <T>(fn: () => Promise<T>) => Promise<T> {
  return async <T>(fn: () => Promise<T>): Promise<T> => {
    if (!deadlineMs) return guarded(fn);
    const deadline = Date.now() + deadlineMs;
    try {
      return await guarded(() => client.withDeadline(deadline, fn));
    } catch (err) {
      throw pastDeadline(err, deadline);
    }
  };
}

/**
 * A call the request's shared deadline cut short comes back CANCELLED (gRPC 1), not
 * DEADLINE_EXCEEDED: past the deadline that is Temporal not answering in time (a burst of starts
 * against a busy server), a 503 to retry, not a 500.
 */
export function pastDeadline(err: unknown, deadline: number, now = Date.now()): unknown {
  const cause = err instanceof ServiceError && err.cause ? err.cause : err;
  if (now >= deadline && isGrpcServiceError(cause) && cause.code === grpc.status.CANCELLED) {
    return new AppError('service_unavailable', 'the workflow service did not answer in time; retry later', {
      cause: err,
      headers: { 'Retry-After': '5' },
    });
  }
  return err;
}

/** `p`, or a rejection after `ms` (the timer is cleared either way). */
export function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error('timeout')), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/**
 * gRPC interceptors for the API's Temporal connection: every call without a deadline of its own
 * gets one `callTimeoutMs` away, outside the SDK's default retries (which would otherwise retry an
 * unreachable server for ~20 s while the HTTP client waits). Past it the call fails with
 * DEADLINE_EXCEEDED, which {@link mapTemporalError} answers as a 503 with Retry-After.
 */
export function temporalCallInterceptors(callTimeoutMs: number): grpc.Interceptor[] {
  const deadline: grpc.Interceptor = (options, nextCall) =>
    new grpc.InterceptingCall(
      nextCall(
        options.deadline === undefined ? { ...options, deadline: Date.now() + callTimeoutMs } : options,
      ),
    );
  return [deadline, makeGrpcRetryInterceptor(defaultGrpcRetryOptions())];
}
