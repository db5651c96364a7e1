/** Stable error codes shared by the API, activities and workflows, and the one AppError base class. */

/** Every error code the platform emits. Extend, never rename: clients switch on these. */
export const ERROR_CODES = [
  'validation_failed',
  'unauthenticated',
  'forbidden',
  'not_found',
  'conflict',
  'idempotency_key_reused',
  'rate_limited',
  'payload_too_large',
  'unsupported_media_type',
  'unknown_verifier',
  'service_unavailable',
  'internal',
  'rebuild_in_progress',
  'unknown_target',
  'rebuild_not_awaiting_approval',
  // Activity failure types (ApplicationFailure.type); deterministic, a retry will not fix them.
  'repo_not_found',
  'ref_not_found',
  'sandbox_image_missing',
  'invalid_sandbox_request',
  // Run control (approvals, interrupts, reruns, graphs).
  'not_awaiting_approval',
  'self_approval_forbidden',
  'already_approved',
  'interrupt_not_found',
  'interrupt_closed',
  'invalid_answer',
  'rerun_unavailable',
  'dependency_cycle',
  'unknown_dependency',
  'duplicate_item',
  'budget_exceeded',
  'merge_conflict',
  'build_failed',
  'deploy_failed',
  'invalid_rebuild_request',
  // Tenancy.
  'repo_not_allowed',
  'ref_not_allowed',
  // Admission (decision 0013).
  'queue_full',
  'admission_timeout',
  'admission_unavailable',
  // Remote repositories and delivery (decision 0019).
  'repo_unreachable',
  'repo_auth_failed',
  'repo_too_large',
  'delivery_failed',
  'delivery_conflict',
  'not_delivered',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

/** HTTP status for each code that can reach the API. */
export const HTTP_STATUS_BY_CODE: Record<ErrorCode, number> = {
  validation_failed: 400,
  unauthenticated: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  idempotency_key_reused: 422,
  rate_limited: 429,
  payload_too_large: 413,
  unsupported_media_type: 415,
  unknown_verifier: 400,
  service_unavailable: 503,
  internal: 500,
  repo_not_found: 400,
  ref_not_found: 400,
  sandbox_image_missing: 503,
  invalid_sandbox_request: 400,
  not_awaiting_approval: 409,
  self_approval_forbidden: 403,
  already_approved: 409,
  interrupt_not_found: 404,
  interrupt_closed: 409,
  invalid_answer: 400,
  rerun_unavailable: 409,
  dependency_cycle: 400,
  unknown_dependency: 400,
  duplicate_item: 400,
  budget_exceeded: 409,
  merge_conflict: 409,
  rebuild_in_progress: 409,
  unknown_target: 400,
  rebuild_not_awaiting_approval: 409,
  build_failed: 500,
  deploy_failed: 500,
  invalid_rebuild_request: 400,
  repo_not_allowed: 403,
  ref_not_allowed: 403,
  queue_full: 429,
  admission_timeout: 503,
  admission_unavailable: 503,
  repo_unreachable: 502,
  repo_auth_failed: 502,
  repo_too_large: 400,
  delivery_failed: 502,
  delivery_conflict: 409,
  not_delivered: 409,
};

/** Short human titles for problem+json `title`. */
export const TITLE_BY_CODE: Record<ErrorCode, string> = {
  validation_failed: 'Request validation failed',
  unauthenticated: 'Authentication required',
  forbidden: 'Insufficient permissions',
  not_found: 'Not found',
  conflict: 'Conflict',
  idempotency_key_reused: 'Idempotency key reused with a different request',
  rate_limited: 'Too many requests',
  payload_too_large: 'Payload too large',
  unsupported_media_type: 'Unsupported media type',
  unknown_verifier: 'Unknown verifier',
  service_unavailable: 'Service unavailable',
  internal: 'Internal error',
  repo_not_found: 'Repository not found',
  ref_not_found: 'Git ref not found',
  sandbox_image_missing: 'Sandbox image missing',
  invalid_sandbox_request: 'Invalid sandbox request',
  not_awaiting_approval: 'Run is not awaiting approval',
  self_approval_forbidden: 'Independent review required',
  already_approved: 'Already approved by this user',
  interrupt_not_found: 'Interrupt not found',
  interrupt_closed: 'Interrupt already closed',
  invalid_answer: 'Answer is not one of the options',
  rerun_unavailable: 'Run cannot be rerun yet',
  dependency_cycle: 'Work graph has a dependency cycle',
  unknown_dependency: 'Work graph names an unknown dependency',
  duplicate_item: 'Work graph names an item twice',
  budget_exceeded: 'Run budget exceeded',
  merge_conflict: 'Merge conflict',
  rebuild_in_progress: 'A rebuild of this target is already running',
  unknown_target: 'Unknown rebuild target',
  rebuild_not_awaiting_approval: 'The rebuild is not waiting for approval',
  build_failed: 'Image build failed',
  deploy_failed: 'Deploy failed',
  invalid_rebuild_request: 'Invalid rebuild request',
  repo_not_allowed: 'Repository not allowed for this tenant',
  ref_not_allowed: 'Ref not allowed for this rebuild target',
  queue_full: "The tenant's run queue is full",
  admission_timeout: 'The run was not admitted in time',
  admission_unavailable: 'The admission gate could not be reached',
  repo_unreachable: 'The repository host could not be reached',
  repo_auth_failed: 'The repository host refused the credentials',
  repo_too_large: 'The repository is larger than the mirror bound',
  delivery_failed: 'The run branch could not be pushed',
  delivery_conflict: 'The remote run branch holds another commit',
  not_delivered: 'The run has nothing to deliver',
};

/** One field-level problem, as reported in a 400's `errors` list. */
export interface FieldError {
  /** Dotted path of the offending field, e.g. `workItem.execute`. */
  field: string;
  message: string;
}

/** Base error with a literal code, so `switch (err.code)` narrows. */
export class AppError extends Error {
  override readonly name: string = 'AppError';
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly options: { cause?: unknown; errors?: FieldError[]; headers?: Record<string, string> } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
  }
}
