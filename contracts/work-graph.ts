/** Work graphs: a set of work items run in dependency order (request, status and the pure ordering). */
import { z } from 'zod';
import { idSchema, refSchema } from './ids';
import { sha256Hex } from './sha256';
import type { ApprovalFloor } from './tenants';
import {
  deliveryViewSchema,
  moodSchema,
  repoSchema,
  runBudgetsSchema,
  workItemInputSchema,
  type Mood,
  type RunBudgets,
  type WorkItem,
} from './run';

/** A work item of a graph: its id is required (dependencies name it). */
export const graphItemSchema = workItemInputSchema.extend({ id: idSchema });

/** `POST /v1/work-graphs` body. */
export const workGraphRequestSchema = z
  .object({
    repo: repoSchema,
    baseRef: refSchema.default('main'),
    mood: moodSchema.default('CALM'),
    /** Runs of the graph in flight at once. */
    parallelism: z.number().int().min(1).max(32).default(4),
    /** Runs per item at most: a failed item is retried as a new run in a stricter mood until this bound. */
    maxAttempts: z.number().int().min(1).max(5).default(2),
    budgets: runBudgetsSchema.optional(),
    items: z.array(graphItemSchema).min(1).max(1000),
  })
  .strict();
export type WorkGraphRequestInput = z.input<typeof workGraphRequestSchema>;
export type WorkGraphRequest = z.output<typeof workGraphRequestSchema>;

export const WORK_ITEM_STATUSES = [
  'pending',
  'running',
  'committed',
  'failed',
  'blocked',
  'cancelled',
] as const;
export type WorkItemStatus = (typeof WORK_ITEM_STATUSES)[number];

export const GRAPH_STATUSES = ['running', 'completed', 'failed', 'cancelled'] as const;
export type GraphStatus = (typeof GRAPH_STATUSES)[number];

/** One item in a graph's status. */
export const graphItemViewSchema = z.object({
  id: z.string(),
  status: z.enum(WORK_ITEM_STATUSES),
  dependsOn: z.array(z.string()),
  /** Every run of this item, first to last, with the mood it ran in. */
  runs: z.array(
    z.object({
      runId: z.string(),
      mood: moodSchema,
      status: z.string(),
      commit: z.string().optional(),
    }),
  ),
  /** Why the item is blocked: the dependencies that finally failed. */
  blockedBy: z.array(z.string()).optional(),
  /** Why the item's last attempt failed, when it did (e.g. `merge_conflict`, `verification_failed`). */
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});
export type GraphItemView = z.infer<typeof graphItemViewSchema>;

/** `GET /v1/work-graphs/:graphId` and the graph workflow's status query. */
export const workGraphViewSchema = z.object({
  graphId: z.string(),
  status: z.enum(GRAPH_STATUSES),
  tenant: z.string(),
  userId: z.string(),
  repo: z.string(),
  baseRef: z.string(),
  mood: moodSchema,
  parallelism: z.number().int(),
  counts: z.record(z.string(), z.number().int()),
  items: z.array(graphItemViewSchema),
  /** Workflow runs the graph has continued into (continue-as-new), for long graphs. */
  continuedAsNew: z.number().int(),
  /** Branch `choiros/graph/<graphId>` in the repository: the base commit plus every committed item, merged. */
  integrationBranch: z.string().optional(),
  /** Its commit now. */
  integrationCommit: z.string().optional(),
  /** Remote repositories: the integration branch on the origin, pushed at every move (decision 0019). */
  delivery: deliveryViewSchema.optional(),
  createdAt: z.string(),
  finishedAt: z.string().optional(),
  /** Why the graph failed before any item could run (e.g. `repo_not_found`). */
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});
export type WorkGraphView = z.infer<typeof workGraphViewSchema>;

/** Input of `workGraphWorkflow` (and of each continue-as-new). */
export interface WorkGraphWorkflowInput {
  graphId: string;
  tenant: string;
  userId: string;
  repo: string;
  baseRef: string;
  mood: Mood;
  parallelism: number;
  maxAttempts: number;
  budgets?: RunBudgets;
  items: (WorkItem & { dependsOn: string[] })[];
  requestHash: string;
  requestedAt: number;
  startedBy?: { scopes: string[]; tokenId?: string };
  /** The tenant's approval floor, handed to every run of the graph (contracts/tenants.ts). */
  approvalFloor?: ApprovalFloor;
  /** Continue-as-new once this many items have started in one workflow run (default 100): no more start, the started ones finish, then it continues. */
  continueAsNewAfter?: number;
  /** State carried across continue-as-new. */
  carried?: {
    items: GraphItemView[];
    continuedAsNew: number;
    /** Events emitted so far (the graph's event seq continues from here). */
    eventSeq: number;
  };
}

export type GraphOrderResult =
  | { ok: true; order: string[] }
  | {
      ok: false;
      code: 'duplicate_item' | 'unknown_dependency' | 'dependency_cycle';
      message: string;
      items: string[];
    };

/**
 * Validates a graph and returns its items in a dependency order (Kahn's algorithm, ties in the
 * order given). Duplicates, unknown dependencies and cycles are rejected, the cycle named in order.
 */
export function orderWorkGraph(items: { id: string; dependsOn: string[] }[]): GraphOrderResult {
  const ids = new Set<string>();
  for (const item of items) {
    if (ids.has(item.id))
      return {
        ok: false,
        code: 'duplicate_item',
        message: `work item ${item.id} appears twice`,
        items: [item.id],
      };
    ids.add(item.id);
  }
  for (const item of items) {
    const unknown = item.dependsOn.filter((d) => !ids.has(d));
    if (unknown.length > 0)
      return {
        ok: false,
        code: 'unknown_dependency',
        message: `work item ${item.id} depends on unknown item(s) ${unknown.join(', ')}`,
        items: unknown,
      };
    if (item.dependsOn.includes(item.id))
      return {
        ok: false,
        code: 'dependency_cycle',
        message: `dependency cycle: ${item.id} → ${item.id}`,
        items: [item.id],
      };
  }
  const indegree = new Map(items.map((i) => [i.id, new Set(i.dependsOn).size]));
  const dependants = new Map<string, string[]>(items.map((i) => [i.id, []]));
  for (const item of items) for (const d of new Set(item.dependsOn)) dependants.get(d)?.push(item.id);
  const order: string[] = [];
  const ready = items.filter((i) => indegree.get(i.id) === 0).map((i) => i.id);
  while (ready.length > 0) {
    const id = ready.shift() as string;
    order.push(id);
    for (const next of dependants.get(id) ?? []) {
      const left = (indegree.get(next) ?? 0) - 1;
      indegree.set(next, left);
      if (left === 0) ready.push(next);
    }
  }
  if (order.length === items.length) return { ok: true, order };
  const cycle = findCycle(items, new Set(order));
  return {
    ok: false,
    code: 'dependency_cycle',
    message: `dependency cycle: ${[...cycle, cycle[0]].join(' → ')}`,
    items: cycle,
  };
}

/** A cycle among the items Kahn's algorithm could not order (each of them lies on or behind one). */
function findCycle(items: { id: string; dependsOn: string[] }[], ordered: Set<string>): string[] {
  const deps = new Map(items.map((i) => [i.id, i.dependsOn.filter((d) => !ordered.has(d))]));
  const start = items.find((i) => !ordered.has(i.id))?.id as string;
  // Walk dependencies until a node repeats; every unordered node has an unordered dependency.
  const seen = new Map<string, number>();
  const path: string[] = [];
  let node = start;
  while (!seen.has(node)) {
    seen.set(node, path.length);
    path.push(node);
    node = deps.get(node)?.[0] as string;
  }
  // Reported in dependency direction reversed (a → b means b depends on a), reading as "runs before".
  return path.slice(seen.get(node)).reverse();
}

/**
 * Workflow id (= run id) of one attempt at one item of a graph: deterministic, so the workflow
 * computes it in replay and tests and the API can name a graph's runs.
 */
export function graphRunId(graphId: string, itemId: string, attempt: number): string {
  return `run-${sha256Hex(`graph-run\0${graphId}\0${itemId}\0${attempt}`).slice(0, 32)}`;
}
