/** Reading run histories in tests: local activity markers (the lean run shape, decision 0015). */
import { defaultPayloadConverter } from '@temporalio/common';
import type { temporal } from '@temporalio/proto';

export interface LocalActivityMarker {
  activityType: string;
  attempt: number;
  /** The local activity's result, when it completed. */
  result: unknown;
}

/** Every local activity recorded in a history, in order. */
export function localActivities(
  events: readonly temporal.api.history.v1.IHistoryEvent[],
): LocalActivityMarker[] {
  const out: LocalActivityMarker[] = [];
  for (const e of events) {
    const m = e.markerRecordedEventAttributes;
    if (m?.markerName !== 'core_local_activity') continue;
    const data = m.details?.data?.payloads?.[0];
    const result = m.details?.result?.payloads?.[0];
    const meta = data
      ? defaultPayloadConverter.fromPayload<{ activity_type?: string; attempt?: number }>(data)
      : {};
    out.push({
      activityType: meta.activity_type ?? '',
      attempt: meta.attempt ?? 1,
      result: result ? defaultPayloadConverter.fromPayload<unknown>(result) : undefined,
    });
  }
  return out;
}

/** How a run joined its tenant's gate by `joinAdmission`: admitted at once or queued, and its retries. */
export function joinOf(events: readonly temporal.api.history.v1.IHistoryEvent[]): {
  admittedAtJoin: boolean | 'bySignal' | undefined;
  retries: number;
} {
  const joins = localActivities(events).filter((l) => l.activityType === 'joinAdmission');
  const answer = joins.find((j) => j.result !== undefined)?.result as
    { admitted?: boolean | 'bySignal' } | undefined;
  return {
    admittedAtJoin: answer?.admitted,
    retries: joins.reduce((n, j) => n + (j.attempt - 1), 0) + Math.max(0, joins.length - 1),
  };
}
