/** Failure helpers shared by the workflows: one way to name a failure, one way to refuse an update. */
import { ActivityFailure, ApplicationFailure, ChildWorkflowFailure } from '@temporalio/workflow';

export interface Failure {
  code: string;
  message: string;
}

/** The stable code and message of a failure: an activity's or child's application failure type, else `internal`. */
export function describeFailure(err: unknown): Failure {
  let cause: unknown = err;
  while ((cause instanceof ActivityFailure || cause instanceof ChildWorkflowFailure) && cause.cause)
    cause = cause.cause;
  if (cause instanceof ApplicationFailure)
    return { code: cause.type ?? 'activity_failed', message: cause.message };
  if (cause instanceof Error) return { code: 'internal', message: cause.message };
  return { code: 'internal', message: String(cause) };
}

/** An update refusal the API maps to its error code (the failure's type). */
export function refusal(code: string, message: string): ApplicationFailure {
  return ApplicationFailure.create({ type: code, message, nonRetryable: true });
}
