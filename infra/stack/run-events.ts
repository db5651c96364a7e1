/**
 * Reads a run's events back from JetStream and checks their numbering: used by tests, the load
 * benchmark and the fault suite to prove nothing was lost or repeated.
 */
import { JSONCodec, type NatsConnection } from 'nats';
import { EVENT_STREAM, runEventsFilter, type EventEnvelope, type SubjectOwner } from '../../contracts';

/** Every event of one run (or graph, or rebuild: their events use its id as run id), in stream order. */
export async function readRunEvents(
  nats: NatsConnection,
  owner: SubjectOwner,
  runId: string,
): Promise<EventEnvelope[]> {
  const consumer = await nats
    .jetstream()
    .consumers.get(EVENT_STREAM, { filterSubjects: runEventsFilter(owner, runId) });
  const codec = JSONCodec<EventEnvelope>();
  const out: EventEnvelope[] = [];
  for (;;) {
    let pending = 0;
    let got = 0;
    const batch = await consumer.fetch({ max_messages: 500, expires: 2000 });
    for await (const m of batch) {
      out.push(codec.decode(m.data));
      got += 1;
      pending = m.info.pending;
      if (pending === 0) break;
    }
    if (got === 0 || pending === 0) return out;
  }
}

/** Fails unless the events are numbered 1..n without a gap or a repeat. */
export function expectGapFree(events: EventEnvelope[]): void {
  const seqs = events.map((e) => e.seq);
  const want = Array.from({ length: seqs.length }, (_, i) => i + 1);
  if (JSON.stringify(seqs) !== JSON.stringify(want)) {
    throw new Error(`events are not gap- and duplicate-free by seq: ${seqs.join(',')}`);
  }
}
