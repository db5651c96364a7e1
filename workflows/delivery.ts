/**
 * deliveryWorkflow: a retried delivery of a committed run's branch (`POST /v1/runs/{id}/delivery`,
 * decision 0019). The run itself has ended; this pushes its branch again from the mirror on the
 * host that made it and records the result as the run's next `receipt.delivery` event.
 */
import type { DeliveryView } from '../contracts';
import { deliver, type DeliveryRequest } from './lib/delivery';
import { EventLog } from './lib/event-log';

export interface DeliveryWorkflowInput extends DeliveryRequest {
  userId: string;
  /** The run's work item, which its events carry. */
  workItemId: string;
  /** Events the run (and earlier retries) emitted: this one's are numbered after them. */
  startSeq: number;
}

export interface DeliveryWorkflowResult {
  delivery: DeliveryView;
  /** Where the run's event numbering stands after this retry. */
  eventSeq: number;
}

export async function deliveryWorkflow(input: DeliveryWorkflowInput): Promise<DeliveryWorkflowResult> {
  const events = new EventLog({
    runId: input.runId,
    tenant: input.tenant,
    userId: input.userId,
    workItemId: input.workItemId,
    startSeq: input.startSeq,
  });
  events.start();
  const delivery = await deliver(input, events);
  await events.close();
  return { delivery, eventSeq: events.emittedCount };
}
