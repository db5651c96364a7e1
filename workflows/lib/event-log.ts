/** Deterministic per-run event numbering with an ordered background flush to JetStream. */
import { CancellationScope, condition, proxyActivities } from '@temporalio/workflow';
import {
  EVENT_SCHEMA_VERSION,
  TASK_QUEUES,
  eventId,
  type EventEnvelope,
  type EventPayload,
  type EventType,
} from '../../contracts';
import type { EventActivities } from '../../activities/types';

// A NATS outage must not fail a run nor lose an event: retry without an attempt limit, capped backoff.
const { publishEvents } = proxyActivities<EventActivities>({
  taskQueue: TASK_QUEUES.orchestration,
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '20 seconds' },
});

const MAX_BATCH = 100;

export interface EventLogContext {
  runId: string;
  tenant: string;
  userId: string;
  /** Absent for events of a whole work graph (their payloads name the items). */
  workItemId?: string;
  /** Events already emitted under this id by an earlier workflow run (continue-as-new); numbering continues after it. */
  startSeq?: number;
}

/**
 * Events are numbered gap-free from 1 in workflow code (replay gives the same numbers), so their
 * ids `<runId>:<seq>` are stable and JetStream's duplicate window makes retried publishes exact.
 */
export class EventLog {
  private seq: number;
  private readonly pending: EventEnvelope[] = [];
  private published: number;
  private closing = false;
  private flusher: Promise<void> | undefined;

  constructor(private readonly ctx: EventLogContext) {
    // Everything an earlier workflow run emitted was flushed before it continued as new.
    this.seq = ctx.startSeq ?? 0;
    this.published = this.seq;
  }

  get emittedCount(): number {
    return this.seq;
  }

  get publishedCount(): number {
    return this.published;
  }

  /** Numbers and queues an event; the payload type is checked against its event type. */
  emit<T extends EventType>(
    eventType: T,
    payload: EventPayload<T>,
    source: 'system' | 'agent' | 'user' = 'system',
  ): void {
    this.seq += 1;
    this.pending.push({
      schema_version: EVENT_SCHEMA_VERSION,
      id: eventId(this.ctx.runId, this.seq),
      timestamp: Date.now(),
      user_id: this.ctx.userId,
      source,
      event_type: eventType,
      payload,
      tenant: this.ctx.tenant,
      run_id: this.ctx.runId,
      ...(this.ctx.workItemId === undefined ? {} : { work_item_id: this.ctx.workItemId }),
      seq: this.seq,
    });
  }

  /** Starts the background flusher; it is not cancellable, so events still reach NATS on cancel. */
  start(): void {
    this.flusher = CancellationScope.nonCancellable(async () => {
      for (;;) {
        await condition(() => this.pending.length > 0 || this.closing);
        if (this.pending.length === 0) return;
        const batch = this.pending.slice(0, MAX_BATCH);
        await publishEvents({ events: batch });
        this.pending.splice(0, batch.length);
        this.published += batch.length;
      }
    });
  }

  /** Waits until every emitted event is in the stream. */
  async close(): Promise<void> {
    this.closing = true;
    await this.flusher;
  }
}
