/** Reads a run's events from JetStream for the gateway (the only way users get history). */
import { JSONCodec, type NatsConnection } from 'nats';
import {
  EVENT_STREAM,
  eventEnvelopeSchema,
  runEventsFilter,
  type EventEnvelope,
  type SubjectOwner,
} from '../../contracts';

export interface RunEventSource {
  /**
   * The run's events with `seq > afterSeq`, in order, live: waits for new ones and ends after
   * `run.completed` (`graph.completed` for a work graph, whose events use its id as run id), or
   * when `signal` aborts. `owner` is the run's owner (tenant, user) — not the caller, who may be
   * a tenant admin or a reviewer — since the events live under the owner's subject prefix.
   */
  stream(
    owner: SubjectOwner,
    runId: string,
    afterSeq: number,
    signal: AbortSignal,
  ): AsyncIterable<EventEnvelope>;
}

const codec = JSONCodec<unknown>();

/** The last event of a run's (or a work graph's) stream. */
const isFinal = (e: EventEnvelope): boolean =>
  e.event_type === 'run.completed' || e.event_type === 'graph.completed';

export function createJetStreamEventSource(nc: NatsConnection): RunEventSource {
  return {
    async *stream(owner, runId, afterSeq, signal) {
      // An ordered consumer is ephemeral, server-side and flow-controlled; it vanishes with us.
      const consumer = await nc
        .jetstream()
        .consumers.get(EVENT_STREAM, { filterSubjects: runEventsFilter(owner, runId) });
      const messages = await consumer.consume({ max_messages: 256 });
      const stop = (): void => {
        void messages.close();
      };
      signal.addEventListener('abort', stop, { once: true });
      let expected = afterSeq + 1;
      try {
        for await (const m of messages) {
          const parsed = eventEnvelopeSchema.safeParse(codec.decode(m.data));
          if (!parsed.success) continue; // not ours to deliver; never crash a reader on one bad message
          const event = parsed.data;
          // Resumed at or past the end: nothing more will come, so end instead of waiting forever.
          if (event.seq < expected) {
            if (isFinal(event)) return;
            continue;
          }
          expected = event.seq + 1;
          yield event;
          if (isFinal(event)) return;
        }
      } finally {
        signal.removeEventListener('abort', stop);
        await messages.close();
      }
    },
  };
}
