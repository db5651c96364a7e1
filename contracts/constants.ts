/** Task queues, search attributes and other constants every process agrees on. */
import { defineSearchAttributeKey } from '@temporalio/common';

/** Task queues (design.md, "Work items and runs"). */
export const TASK_QUEUES = {
  orchestration: 'choiros-orchestration',
  sandbox: 'choiros-sandbox',
  build: 'choiros-build',
} as const;

/** Per-host sandbox queue: sandbox activities run on the host that holds the sandbox. */
export function hostSandboxQueue(hostId: string): string {
  return `${TASK_QUEUES.sandbox}-${hostId}`;
}

/** Custom search attributes the platform registers on the Temporal namespace (all Keyword). */
export const SEARCH_ATTRIBUTES = {
  tenant: defineSearchAttributeKey('ChoirTenant', 'KEYWORD'),
  userId: defineSearchAttributeKey('ChoirUserId', 'KEYWORD'),
  runStatus: defineSearchAttributeKey('ChoirRunStatus', 'KEYWORD'),
  mood: defineSearchAttributeKey('ChoirMood', 'KEYWORD'),
  repo: defineSearchAttributeKey('ChoirRepo', 'KEYWORD'),
  rebuildTarget: defineSearchAttributeKey('ChoirRebuildTarget', 'KEYWORD'),
  rebuildStage: defineSearchAttributeKey('ChoirRebuildStage', 'KEYWORD'),
} as const;

/** Names of the custom search attributes, for registration (`temporal server start-dev --search-attribute`). */
export const SEARCH_ATTRIBUTE_NAMES = Object.values(SEARCH_ATTRIBUTES).map((k) => k.name);

/** JetStream stream that holds every event (design.md, "Events and NATS"). */
export const EVENT_STREAM = 'CHOIROS_EVENTS';

/** Workflow type names, so the API can start workflows by name without importing workflow code. */
export const WORKFLOW_TYPES = {
  run: 'runWorkflow',
  admission: 'admissionWorkflow',
  workGraph: 'workGraphWorkflow',
  rebuild: 'rebuildWorkflow',
  delivery: 'deliveryWorkflow',
} as const;

/** Workflow id of a run's delivery retries (`POST /v1/runs/{id}/delivery`); one at a time, reused. */
export function deliveryWorkflowId(runId: string): string {
  return `${runId}-delivery`;
}

/** Workflow id of a tenant's fairness gate (admissionWorkflow). */
export function admissionWorkflowId(tenant: string): string {
  return `admission-${tenant}`;
}
