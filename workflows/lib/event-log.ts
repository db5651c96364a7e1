/** Deterministic per-run event numbering with an ordered flush to JetStream. */
import {
  isCancellation,
  CancellationScope,
  condition,
  proxyActivities,
  proxyLocalActivities,
} from '@temporalio/workflow';
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

/** Per event: a healthy NATS acks in milliseconds. */
const LOCAL_PUBLISH_TIMEOUT_MS = 1_000;

// One marker instead of a scheduled/started/completed activity and a workflow task. One short
// attempt: a local activity holds the workflow task open (queries wait behind it), so when NATS is
// away the unbounded activity above takes over at once.
const { publishEventsLocal } = proxyLocalActivities<EventActivities>({
  startToCloseTimeout: '2 seconds',
  retry: { maximumAttempts: 1 },
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
  /**
   * Lean flushing (decision 0015): steps carry the pending events (`carry`/`settle`), and the
   * flusher publishes by local activity only what no step is carrying. Off: one publish activity
   * per batch, as histories from before record it.
   */
  lean?: boolean;
}

/**
 * Events are numbered gap-free from 1 in workflow code (replay gives the same numbers), so their
 * ids `<runId>:<seq>` are stable and JetStream's duplicate window makes retried publishes exact.
 * Every publisher (a step, the flusher) publishes in seq order from the first unpublished event and
 * stops at its first failure, so the stream holds each event once and in order even when two
 * publishers overlap (the overlap is deduplicated by id).
 */
export class EventLog {
  private seq: number;
  /** Emitted and not known to be in the stream, in seq order. */
  private pending: EventEnvelope[] = [];
  private published: number;
  private closing = false;
  private flusher: Promise<void> | undefined;
  /** Steps in flight carrying events, and the highest seq they carry. */
  private carriers = 0;
  private carriedUpTo = 0;

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

  /**
   * Hands the pending events to a step that publishes them first (lean only). Call `settle` with
   * the step's count when it returns, also when it failed (count 0).
   */
  carry(): EventEnvelope[] {
    // One carrier at a time: a batch always starts at the first unpublished event (order).
    const batch = this.carriers > 0 ? [] : this.pending.slice(0, MAX_BATCH);
    this.carriers += 1;
    const last = batch[batch.length - 1];
    if (last) this.carriedUpTo = Math.max(this.carriedUpTo, last.seq);
    return batch;
  }

  /** A carrying step returned: the first `published` of its batch are in the stream. */
  settle(batch: readonly EventEnvelope[], published: number): void {
    this.carriers -= 1;
    const last = batch[published - 1];
    if (last) this.markPublished(last.seq);
  }

  /** Runs a step with the pending events; settles the batch however the step ends. */
  async carried<T>(step: (events: EventEnvelope[]) => Promise<{ value: T; published: number }>): Promise<T> {
    const batch = this.carry();
    let published = 0;
    try {
      const result = await step(batch);
      published = result.published;
      return result.value;
    } finally {
      this.settle(batch, published);
    }
  }

  private markPublished(upTo: number): void {
    if (upTo <= this.published) return;
    this.published = upTo;
    this.pending = this.pending.filter((e) => e.seq > upTo);
  }

  /** Starts the background flusher; it is not cancellable, so events still reach NATS on cancel. */
  start(): void {
    const lean = this.ctx.lean === true;
    // Lean: a step in flight carries the pending events; the flusher waits for what it does not.
    const due = (): boolean =>
      this.closing ||
      (this.pending.length > 0 && (!lean || this.carriers === 0 || this.seq > this.carriedUpTo));
    this.flusher = CancellationScope.nonCancellable(async () => {
      for (;;) {
        await condition(due);
        // Lean: a step that started in the same workflow task may have taken the events by now.
        if (lean && !due()) continue;
        if (this.pending.length === 0) return;
        const batch = this.pending.slice(0, MAX_BATCH);
        if (lean) await this.publishLean(batch);
        else await publishEvents({ events: batch });
        const last = batch[batch.length - 1];
        if (last) this.markPublished(last.seq);
      }
    });
  }

  private async publishLean(batch: EventEnvelope[]): Promise<void> {
    try {
      await publishEventsLocal({ events: batch, timeoutMs: LOCAL_PUBLISH_TIMEOUT_MS });
    } catch (err) {
      // A local activity's failure comes as its own failure (not wrapped in an ActivityFailure).
      if (isCancellation(err)) throw err;
      await publishEvents({ events: batch });
    }
  }

  /** Waits until every emitted event is in the stream. */
  async close(): Promise<void> {
    this.closing = true;
    await this.flusher;
  }
}
