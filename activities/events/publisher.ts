/** Publishes run events to JetStream with `Nats-Msg-Id = event.id` (exactly-once in the stream). */
import type { JetStreamClient, JetStreamManager, PubAck, StreamConfig } from 'nats';
import { DiscardPolicy, JSONCodec, RetentionPolicy, StorageType, nanos } from 'nats';
import {
  ALL_EVENTS_SUBJECT,
  EVENT_STREAM,
  eventEnvelopeSchema,
  eventSubject,
  type EventEnvelope,
} from '../../contracts';
import type { EventActivities, PublishResult } from '../types';
import type { Logger } from 'pino';
import { Context } from '@temporalio/activity';

const codec = JSONCodec<EventEnvelope>();

export interface StreamLimits {
  maxAgeDays: number;
  maxBytes: number;
  duplicateWindowSeconds: number;
}

export const DEFAULT_STREAM_LIMITS: StreamLimits = {
  maxAgeDays: 30,
  maxBytes: 10 * 1024 * 1024 * 1024,
  duplicateWindowSeconds: 300,
};

/** Creates or updates the event stream; safe to call at every worker start. */
export async function ensureEventStream(
  jsm: JetStreamManager,
  limits: StreamLimits = DEFAULT_STREAM_LIMITS,
): Promise<void> {
  const config: Partial<StreamConfig> & { name: string } = {
    name: EVENT_STREAM,
    subjects: [ALL_EVENTS_SUBJECT],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    max_age: nanos(limits.maxAgeDays * 24 * 3600 * 1000),
    max_bytes: limits.maxBytes,
    duplicate_window: nanos(limits.duplicateWindowSeconds * 1000),
    num_replicas: 1,
    // Direct gets serve the gateway's point reads; users still cannot reach them (they publish nothing).
    allow_direct: true,
  };
  try {
    await jsm.streams.info(EVENT_STREAM);
  } catch {
    await jsm.streams.add(config);
    return;
  }
  const { storage: _storage, ...updatable } = config;
  void _storage;
  await jsm.streams.update(EVENT_STREAM, updatable);
}

/**
 * Publishes one event on its subject to the event stream, deduplicated by `msgID` (the event id
 * unless given): the one publish path of workers and the republish command.
 */
export function publishEnvelope(
  js: JetStreamClient,
  event: EventEnvelope,
  msgID = event.id,
  timeoutMs = 10_000,
): Promise<PubAck> {
  return js.publish(eventSubject(event), codec.encode(event), {
    msgID,
    expect: { streamName: EVENT_STREAM },
    timeout: timeoutMs,
  });
}

/** How long a step waits for each carried event's ack before it leaves the rest to the workflow. */
export const CARRIED_PUBLISH_TIMEOUT_MS = 2_000;

/**
 * Publishes a run's carried events in order and stops at the first failure (decision 0015): a
 * step never fails for NATS. Returns how many, from the first, are in the stream.
 */
export async function publishCarried(
  deps: EventActivityDeps,
  events: readonly unknown[],
  timeoutMs = CARRIED_PUBLISH_TIMEOUT_MS,
): Promise<number> {
  let published = 0;
  for (const raw of events) {
    try {
      const event = eventEnvelopeSchema.parse(raw);
      deps.beforePublish?.(event, Context.current().info.attempt);
      const ack = await publishEnvelope(deps.js, event, event.id, timeoutMs);
      deps.onPublished?.(event, ack.duplicate);
      published += 1;
    } catch (err) {
      deps.logger.warn(
        { event: 'events.carried.unpublished', published, left: events.length - published, err },
        'carried events left to the workflow',
      );
      break;
    }
  }
  return published;
}

export interface EventActivityDeps {
  js: JetStreamClient;
  logger: Logger;
  /**
   * Fault injection for tests of at-least-once publishing: called before each publish with the
   * activity attempt; throwing fails the attempt mid-batch, as a crash or a NATS error would.
   */
  beforePublish?: (event: EventEnvelope, attempt: number) => void;
  /** Called after each acknowledged publish (worker metrics: run counts, flush lag). */
  onPublished?: (event: EventEnvelope, duplicate: boolean) => void;
}

export function createEventActivities(deps: EventActivityDeps): EventActivities {
  const publish = async (events: EventEnvelope[], timeoutMs?: number): Promise<PublishResult> => {
    const acks: PublishResult['acks'] = [];
    // Sequential on purpose: order by seq within a run is part of the contract.
    for (const raw of events) {
      const event = eventEnvelopeSchema.parse(raw);
      deps.beforePublish?.(event, Context.current().info.attempt);
      const ack = await publishEnvelope(deps.js, event, event.id, timeoutMs);
      acks.push({ id: event.id, streamSeq: ack.seq, duplicate: ack.duplicate });
      deps.onPublished?.(event, ack.duplicate);
    }
    const first = events[0];
    if (first) {
      deps.logger.debug(
        {
          event: 'events.published',
          runId: first.run_id,
          count: events.length,
          lastSeq: events[events.length - 1]?.seq,
        },
        'events published',
      );
    }
    return { acks };
  };
  return {
    publishEvents: ({ events }) => publish(events),
    async publishEventsLocal({ events, timeoutMs }) {
      return { ...(await publish(events, timeoutMs)), events };
    },
  };
}
