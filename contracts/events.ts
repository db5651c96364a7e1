/** Event envelope (a superset of the ChoirOS v0 envelope), event types and NATS subject builders. */
import { z } from 'zod';
import { ID_PATTERN, idSchema } from './ids';

export const EVENT_SCHEMA_VERSION = 1;

/** Event types the orchestrator emits. v0 names where one fits, new `run.*`/`sandbox.*` otherwise. */
export const EVENT_TYPES = [
  'run.created',
  'note.status',
  'sandbox.created',
  'sandbox.destroyed',
  'sandbox.destroy.failed',
  'sandbox.egress',
  'sandbox.egress.summary',
  'run.execution.completed',
  'run.verifier.plan',
  'receipt.verifier.attestations',
  'receipt.commit',
  'receipt.delivery',
  'receipt.pull_request',
  'run.discarded',
  'run.failed',
  'run.completed',
  'run.queued',
  'run.admitted',
  'run.mood.policy',
  'run.mood.transition',
  'run.approval.requested',
  'run.approval.decided',
  'run.interrupt.requested',
  'run.interrupt.answered',
  'receipt.timeout',
  'run.verifier.rerun',
  'workitem.started',
  'workitem.completed',
  'workitem.retry',
  'workitem.blocked',
  'graph.created',
  'graph.completed',
  'rebuild.requested',
  'rebuild.stage',
  'rebuild.resolved',
  'rebuild.verify.suite',
  'rebuild.image.built',
  'rebuild.image.pushed',
  'rebuild.approval.requested',
  'rebuild.approval.decided',
  'rebuild.deploy.service',
  'rebuild.health',
  'rebuild.rollback',
  'rebuild.completed',
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

/** Lower-case, dot-delimited: the v0 naming rule for every event type. */
export const EVENT_TYPE_PATTERN = /^[a-z0-9]+(\.[a-z0-9_]+)*$/;

export const EVENT_SOURCES = ['user', 'agent', 'system'] as const;

export const eventEnvelopeSchema = z
  .object({
    schema_version: z.literal(EVENT_SCHEMA_VERSION),
    id: z.string().regex(/^[A-Za-z0-9_-]{1,64}:[0-9]+$/),
    timestamp: z.number().int().nonnegative(),
    user_id: idSchema,
    source: z.enum(EVENT_SOURCES),
    event_type: z.string().regex(EVENT_TYPE_PATTERN),
    payload: z.record(z.string(), z.unknown()),
    tenant: idSchema,
    run_id: idSchema,
    work_item_id: idSchema.optional(),
    seq: z.number().int().positive(),
  })
  .strict();
export type EventEnvelope = z.infer<typeof eventEnvelopeSchema>;

/** Deterministic event id: a retried publish is the same event. */
export function eventId(runId: string, seq: number): string {
  return `${runId}:${seq}`;
}

/** The run id and seq of an event id, or undefined when it is not one. */
export function parseEventId(id: string): { runId: string; seq: number } | undefined {
  const m = /^([A-Za-z0-9_-]{1,64}):([0-9]{1,9})$/.exec(id);
  return m?.[1] && m[2] ? { runId: m[1], seq: Number(m[2]) } : undefined;
}

function assertSubjectToken(kind: string, value: string): void {
  if (!ID_PATTERN.test(value)) {
    throw new Error(`${kind} ${JSON.stringify(value)} is not a valid subject token`);
  }
}

/**
 * Version of the subject layout (docs/tenancy.md, "Migration"). 1: `choiros.<userId>.run.<runId>.<type>`
 * (user ids alone: the same user id in two tenants shared a prefix); 2: tenant-qualified, below.
 * The envelope (`schema_version` 1) did not change: it always carried `tenant`.
 */
export const SUBJECT_LAYOUT_VERSION = 2;

/** The owner of a run's events: subjects are keyed by (tenant, user), never by user id alone. */
export interface SubjectOwner {
  tenant: string;
  userId: string;
}

/** `choiros.<tenant>.<userId>.run.<runId>.<event_type>` */
export function runEventSubject(owner: SubjectOwner, runId: string, eventType: string): string {
  assertSubjectToken('tenant', owner.tenant);
  assertSubjectToken('userId', owner.userId);
  assertSubjectToken('runId', runId);
  if (!EVENT_TYPE_PATTERN.test(eventType))
    throw new Error(`event type ${JSON.stringify(eventType)} is invalid`);
  return `choiros.${owner.tenant}.${owner.userId}.run.${runId}.${eventType}`;
}

/** The subject of an envelope: built from its own `tenant`, `user_id`, `run_id` and `event_type`. */
export function eventSubject(
  event: Pick<EventEnvelope, 'tenant' | 'user_id' | 'run_id' | 'event_type'>,
): string {
  return runEventSubject({ tenant: event.tenant, userId: event.user_id }, event.run_id, event.event_type);
}

/** Every event of one run: `choiros.<tenant>.<userId>.run.<runId>.>` */
export function runEventsFilter(owner: SubjectOwner, runId: string): string {
  assertSubjectToken('tenant', owner.tenant);
  assertSubjectToken('userId', owner.userId);
  assertSubjectToken('runId', runId);
  return `choiros.${owner.tenant}.${owner.userId}.run.${runId}.>`;
}

/** Layout 1 filter of one run's events (`choiros.<userId>.run.<runId>.>`), for migration only. */
export function legacyRunEventsFilter(userId: string, runId: string): string {
  assertSubjectToken('userId', userId);
  assertSubjectToken('runId', runId);
  return `choiros.${userId}.run.${runId}.>`;
}

/** A principal's own prefix, the only subjects it may subscribe to: `choiros.<tenant>.<userId>.>` */
export function userSubjectPrefix(owner: SubjectOwner): string {
  assertSubjectToken('tenant', owner.tenant);
  assertSubjectToken('userId', owner.userId);
  return `choiros.${owner.tenant}.${owner.userId}.>`;
}

/**
 * Per-principal inbox prefix `_INBOX_<tenant>.<userId>`, so replies to one principal are not
 * visible to another (a shared `_INBOX.>` leaks). The tenant ends the first token and the user id
 * is a token of its own, so no two (tenant, user) pairs share a prefix.
 */
export function userInboxPrefix(owner: SubjectOwner): string {
  assertSubjectToken('tenant', owner.tenant);
  assertSubjectToken('userId', owner.userId);
  return `_INBOX_${owner.tenant}.${owner.userId}`;
}

/** Every subject in the event stream. */
export const ALL_EVENTS_SUBJECT = 'choiros.>';
