/**
 * Re-publishes a run's events from its Temporal history, the source of truth: every event a run
 * emitted is recorded there — in the input of a `publishEvents` activity or of a step that carried
 * it (decision 0015), or in the result of a local activity that published it (a local activity's
 * marker records its result, not its input). Only events missing from the stream are published,
 * in seq order, so running it twice or on an intact run changes nothing.
 */
import type { Client } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import type { temporal } from '@temporalio/proto';
import { JSONCodec, type JetStreamClient } from 'nats';
import {
  EVENT_STREAM,
  eventEnvelopeSchema,
  runEventsFilter,
  type EventEnvelope,
  type SubjectOwner,
} from '../../contracts';
import { publishEnvelope } from './publisher';

/** The `events` a recorded payload carries, if it carries any. */
function carriedEvents(payload: temporal.api.common.v1.IPayload | undefined | null): unknown[] {
  if (!payload) return [];
  const value = defaultPayloadConverter.fromPayload<unknown>(payload);
  if (typeof value !== 'object' || value === null || !('events' in value)) return [];
  const { events } = value;
  return Array.isArray(events) ? events : [];
}

/** Activities whose input holds events, and local activities whose result repeats them. */
const CARRYING_ACTIVITIES = new Set([
  'publishEvents',
  'createSandboxStep',
  'executeStep',
  'verifyStep',
  'finishStep',
]);
const CARRYING_LOCAL_ACTIVITIES = new Set(['publishEventsLocal', 'joinAdmission']);

function localActivityType(
  details: temporal.api.history.v1.IMarkerRecordedEventAttributes['details'],
): string {
  const data = details?.data?.payloads?.[0];
  if (!data) return '';
  const value = defaultPayloadConverter.fromPayload<{ activity_type?: string }>(data);
  return value.activity_type ?? '';
}

/** The events recorded in a run's workflow history, unique by id, in seq order. */
export async function eventsFromHistory(client: Client, runId: string): Promise<EventEnvelope[]> {
  const history = await client.workflow.getHandle(runId).fetchHistory();
  const byId = new Map<string, EventEnvelope>();
  for (const e of history.events ?? []) {
    const scheduled = e.activityTaskScheduledEventAttributes;
    const marker = e.markerRecordedEventAttributes;
    const raws = [
      ...(CARRYING_ACTIVITIES.has(scheduled?.activityType?.name ?? '')
        ? carriedEvents(scheduled?.input?.payloads?.[0])
        : []),
      ...(marker?.markerName === 'core_local_activity' &&
      CARRYING_LOCAL_ACTIVITIES.has(localActivityType(marker.details))
        ? carriedEvents(marker.details?.result?.payloads?.[0])
        : []),
    ];
    for (const raw of raws) {
      const event = eventEnvelopeSchema.parse(raw);
      byId.set(event.id, event);
    }
  }
  return [...byId.values()].sort((a, b) => a.seq - b.seq);
}

/** Seqs of a run's events currently in the stream. */
export async function seqsInStream(
  js: JetStreamClient,
  owner: SubjectOwner,
  runId: string,
): Promise<Set<number>> {
  const codec = JSONCodec<{ seq?: number }>();
  const seqs = new Set<number>();
  const consumer = await js.consumers.get(EVENT_STREAM, { filterSubjects: runEventsFilter(owner, runId) });
  for (;;) {
    const batch = await consumer.fetch({ max_messages: 500, expires: 1000 });
    let got = 0;
    let pending = 0;
    for await (const m of batch) {
      got += 1;
      pending = m.info.pending;
      const seq = codec.decode(m.data).seq;
      if (typeof seq === 'number') seqs.add(seq);
      if (pending === 0) break;
    }
    if (got === 0 || pending === 0) return seqs;
  }
}

export interface RepublishReport {
  runId: string;
  inHistory: number;
  alreadyInStream: number;
  republished: number;
}

export async function republishRunEvents(
  deps: { client: Client; js: JetStreamClient },
  runId: string,
): Promise<RepublishReport> {
  const events = await eventsFromHistory(deps.client, runId);
  const first = events[0];
  if (!first) return { runId, inHistory: 0, alreadyInStream: 0, republished: 0 };
  // Compared on the current (tenant-qualified) layout: events a run published under layout 1
  // (`choiros.<userId>.…`) count as missing and are re-published on their tenant-qualified subject.
  const present = await seqsInStream(deps.js, { tenant: first.tenant, userId: first.user_id }, runId);
  let republished = 0;
  for (const event of events) {
    if (present.has(event.seq)) continue;
    let ack = await publishEnvelope(deps.js, event);
    if (ack.duplicate) {
      // The id is still in the stream's duplicate window although the message is gone (deleted
      // or purged): publish under a derived id; the envelope, its id and seq are unchanged.
      ack = await publishEnvelope(deps.js, event, `${event.id}:republished`);
    }
    if (!ack.duplicate) republished += 1;
  }
  return { runId, inHistory: events.length, alreadyInStream: present.size, republished };
}
