/** Run request, work item, run status and the workflow's input/output shapes. */
import { z } from 'zod';
import { idSchema, refSchema } from './ids';
import type { ApprovalFloor } from './tenants';

/** Moods: deterministic policy bundles (domain.md §1). */
export const MOODS = [
  'CALM',
  'CURIOUS',
  'SKEPTICAL',
  'PARANOID',
  'BOLD',
  'CONTRITE',
  'PETTY',
  'DEFERENTIAL',
] as const;
export const moodSchema = z.enum(MOODS);
export type Mood = z.infer<typeof moodSchema>;

export const RISK_TIERS = ['low', 'medium', 'high'] as const;
export const riskTierSchema = z.enum(RISK_TIERS);

/** Run states, in the order a run moves through them (design.md, "Work items and runs"). */
export const RUN_STATUSES = [
  'created',
  'queued',
  'running',
  'verifying',
  'awaiting_approval',
  'committed',
  'discarded',
  'failed',
  'cancelled',
] as const;
export const runStatusSchema = z.enum(RUN_STATUSES);
export type RunStatus = z.infer<typeof runStatusSchema>;

/** States a run never leaves. */
export const TERMINAL_STATUSES: readonly RunStatus[] = ['committed', 'discarded', 'failed', 'cancelled'];
export function isTerminalStatus(s: RunStatus): boolean {
  return TERMINAL_STATUSES.includes(s);
}

/** One argv element: no NUL bytes, bounded length. Commands are argv arrays, never shell strings. */
const argSchema = z
  .string()
  .max(4096, 'argument longer than 4096 characters')
  .refine((a) => !a.includes('\0'), 'argument contains a NUL byte');

/** A command as an argv array. */
export const argvSchema = z
  .array(argSchema)
  .min(1, 'must have at least one element')
  .max(256, 'must have at most 256 elements')
  .refine((argv) => (argv[0] ?? '').length > 0, 'first element (the program) must not be empty');

/** The work item as given inline in a run request. */
export const workItemInputSchema = z
  .object({
    id: idSchema.optional(),
    description: z.string().trim().min(1, 'must not be empty').max(20_000),
    execute: argvSchema,
    requiredVerifiers: z.array(idSchema).max(32).default([]),
    riskTier: riskTierSchema.default('low'),
    acceptanceCriteria: z.array(z.string().min(1).max(2000)).max(50).default([]),
    /** Ids of work items this one needs committed first (work graphs). */
    dependsOn: z.array(idSchema).max(64).default([]),
    /** The work item this one was split from. */
    parentId: idSchema.optional(),
  })
  .strict();
export type WorkItemInput = z.input<typeof workItemInputSchema>;
export type WorkItem = z.output<typeof workItemInputSchema> & { id: string };

/**
 * Git URLs a run may name, in conservative characters so nothing in one can be read by git as an
 * option or a transport helper (`ext::`, a leading `-`):
 * - `file:///abs/path`: a repository on the worker's host, served through the bare mirror cache;
 * - `https://host[:port]/path` (and `http://` to a loopback host only, for local git servers): a
 *   remote repository (decision 0019), mirrored per tenant and delivered back to its origin.
 * User info, queries and fragments are never part of one: credentials live in the tenants file.
 */
const FILE_URL_PATTERN = /^file:\/\/\/[A-Za-z0-9._~+/-]+$/;
const REMOTE_URL_PATTERN =
  /^(https:\/\/[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?|http:\/\/(localhost|127\.0\.0\.1|\[::1\]))(:[0-9]{1,5})?\/[A-Za-z0-9._~+/-]*$/;

/** True for an `https://` (or loopback `http://`) repository URL the platform accepts. */
export function isRemoteRepoUrl(repo: string): boolean {
  if (!REMOTE_URL_PATTERN.test(repo)) return false;
  const path = repo.slice(repo.indexOf('/', repo.indexOf('//') + 2));
  return !path.split('/').some((s) => s === '..' || s === '.') && !path.includes('//');
}

/** True for a repository URL the platform accepts (served through the bare mirror cache). */
export function isGitUrl(repo: string): boolean {
  if (FILE_URL_PATTERN.test(repo)) return !repo.slice('file://'.length).split('/').includes('..');
  return isRemoteRepoUrl(repo);
}

/** True when a URL names user info (`https://user:token@host/…`): refused, and never echoed or logged. */
export function hasEmbeddedCredentials(repo: string): boolean {
  return /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*@/i.test(repo);
}

/**
 * Repository of a run: an absolute local path (worktrees come straight from that repository, so
 * the run branch lands in it), a `file://` URL (worktrees come from a bare mirror under the
 * worker's data dir, shared by every run of that URL; the run branch stays in the mirror), or an
 * `https://` URL (the same mirror, per tenant; a committed run's branch is pushed back to it).
 */
export const repoSchema = z
  .string()
  .min(1)
  .max(1024)
  .refine((r) => !r.includes('\0'), 'contains a NUL byte')
  .refine(
    (r) => !hasEmbeddedCredentials(r),
    "must not embed credentials: name the repository host's credentials in the tenants file",
  )
  .refine(
    (r) => hasEmbeddedCredentials(r) || r.startsWith('/') || isGitUrl(r),
    'must be an absolute path to a local git repository, a file:/// URL or an https:// git URL',
  )
  .refine((r) => !r.split('/').includes('..'), 'must not contain ".." segments');

/**
 * Execution-lane network: `none` (no interface but loopback; the default), `internal` (a Docker
 * network of the run's own, with no route out; for service containers of the run) or `allowlist`
 * (the run's own network plus a filtering HTTP proxy that lets out only the listed host names and
 * ports). The verifier lane never has a network.
 */
export const NETWORK_POLICIES = ['none', 'internal', 'allowlist'] as const;
export const networkPolicySchema = z.enum(NETWORK_POLICIES);
export type NetworkPolicy = z.infer<typeof networkPolicySchema>;

/**
 * True for a name that a resolver or URL parser would read as an IP address: the WHATWG URL
 * standard's "ends in a number" rule, i.e. the last label is all digits or `0x` hex. That covers
 * every IPv4 notation `inet_aton` accepts: 127.0.0.1, 2130706433, 0x7f000001, 0177.0.0.1, 127.1.
 * (IPv6, bracketed or not, never matches the host-name pattern: it has `:` or `[`.)
 */
export function isIpLikeHostName(host: string): boolean {
  const last = host.replace(/\.$/, '').split('.').pop() ?? '';
  return /^[0-9]+$/.test(last) || /^0x[0-9a-f]*$/i.test(last);
}

/** A host name (never an IP address in any notation: the allow-list is by name), lower case, RFC 1123. */
export const hostNameSchema = z
  .string()
  .max(253)
  .regex(
    /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/,
    'must be a lower-case host name',
  )
  .refine((h) => !isIpLikeHostName(h), 'must be a host name, not an IP address');

/** One allowed egress destination of the execution lane. */
export const egressRuleSchema = z
  .object({ host: hostNameSchema, port: z.number().int().min(1).max(65535) })
  .strict();
export type EgressRule = z.infer<typeof egressRuleSchema>;

/** Limits of one run; each lowers (never raises) what the mood allows. */
export const runBudgetsSchema = z
  .object({
    /** Wall-clock budget of the whole run; past it the run is stopped and ends `failed` (budget_exceeded). */
    wallClockSeconds: z.number().int().min(10).max(86_400).optional(),
    /** Most reruns of one verifier that did not pass (the mood's own number is the ceiling). */
    maxVerifierReruns: z.number().int().min(0).max(5).optional(),
    /** How long an approval may take; past it the run is discarded (the safe default). Default 24 h. */
    approvalTimeoutSeconds: z
      .number()
      .int()
      .min(1)
      .max(7 * 86_400)
      .optional(),
    /** How long a human interrupt may wait for an answer before its default action runs. Default 1 h. */
    interruptTimeoutSeconds: z
      .number()
      .int()
      .min(1)
      .max(7 * 86_400)
      .optional(),
  })
  .strict();
export type RunBudgets = z.infer<typeof runBudgetsSchema>;

/** Review the request asks for on top of what mood and risk tier require. */
export const reviewRequestSchema = z
  .object({
    /** Require an approval even where mood and risk tier do not. */
    required: z.boolean().optional(),
    /** Distinct approvers needed (default 1). */
    quorum: z.number().int().min(1).max(5).optional(),
  })
  .strict();

/** `POST /v1/runs` body (design.md, "Interfaces that other tools rely on"). */
export const runRequestSchema = z
  .object({
    repo: repoSchema,
    baseRef: refSchema.default('main'),
    mood: moodSchema.default('CALM'),
    network: networkPolicySchema.optional(),
    /** With `network: allowlist`: the only destinations the execution lane may reach. */
    egress: z.array(egressRuleSchema).min(1).max(32).optional(),
    budgets: runBudgetsSchema.optional(),
    review: reviewRequestSchema.optional(),
    workItem: workItemInputSchema,
  })
  .strict()
  .superRefine((r, ctx) => {
    if (r.network === 'allowlist' && !r.egress) {
      ctx.addIssue({ code: 'custom', path: ['egress'], message: 'is required when network is allowlist' });
    }
    if (r.egress && r.network !== 'allowlist') {
      ctx.addIssue({ code: 'custom', path: ['egress'], message: 'is only allowed with network allowlist' });
    }
  });
export type RunRequestInput = z.input<typeof runRequestSchema>;
export type RunRequest = z.output<typeof runRequestSchema>;

/** Who started the run: the verified principal, never ids from the request body. */
export interface Principal {
  tenant: string;
  userId: string;
  scopes: string[];
  tokenId?: string;
}

/** Input of `runWorkflow`. Identity travels with the work. */
export interface RunWorkflowInput {
  runId: string;
  tenant: string;
  userId: string;
  request: RunRequest & { workItem: WorkItem };
  /** sha256 of the canonical request; lets the API tell a retried request from a reused key. */
  requestHash: string;
  /** Epoch ms when the API accepted the request. */
  requestedAt: number;
  /** The verified token that started the run (scopes and token id), for audit. */
  startedBy?: { scopes: string[]; tokenId?: string };
  /** A rerun: the earlier run, and the exact base commit and sandbox image it recorded. */
  rerun?: { of: string; baseCommit: string; imageId: string };
  /** The work graph this run belongs to (started as its child). */
  graph?: { graphId: string; itemId: string; attempt: number };
  /** Approval the run needs whatever its request said: tenant policy, a rerun's first run (contracts/tenants.ts). */
  approvalFloor?: ApprovalFloor;
}

/** `POST /v1/runs/:runId/rerun` body. */
export const rerunRequestSchema = z.object({ mood: moodSchema.optional() }).strict();

/** Approve or reject a run waiting in `awaiting_approval` (`POST /v1/runs/:id/approve|reject`). */
export const approvalBodySchema = z.object({ comment: z.string().max(2000).optional() }).strict();

/** Answer to a human interrupt (`POST /v1/runs/:id/interrupts/:iid/answer`). */
export const interruptAnswerBodySchema = z
  .object({ answer: z.string().min(1).max(200), comment: z.string().max(2000).optional() })
  .strict();

export const VERIFIER_RESULTS = ['pass', 'fail', 'error', 'timeout'] as const;
export type VerifierResult = (typeof VERIFIER_RESULTS)[number];

/** Attempts through the egress proxy reported one by one; the rest are only counted. */
export const EGRESS_INDIVIDUAL_ATTEMPTS = 20;
/** Distinct destinations (host:port) and reasons a summary counts by key; the rest are "other". */
export const EGRESS_SUMMARY_MAX_KEYS = 32;

/** One attempt through the egress proxy. `address` is the resolved address it was decided on. */
export const egressAttemptSchema = z.object({
  at: z.number().int(),
  host: z.string(),
  port: z.number().int(),
  allowed: z.boolean(),
  reason: z.string(),
  address: z.string().optional(),
});
export type EgressAttempt = z.infer<typeof egressAttemptSchema>;

/**
 * Every attempt through one run's egress proxy, counted with bounded keys, so a flood of attempts
 * costs a fixed size in outcomes, events and history. `complete` is false when the proxy did not
 * answer with its own counts and these were made from the individual attempts alone.
 */
export const egressSummarySchema = z.object({
  total: z.number().int().nonnegative(),
  allowed: z.number().int().nonnegative(),
  denied: z.number().int().nonnegative(),
  rateLimited: z.number().int().nonnegative(),
  /** How many of `total` were reported one by one. */
  individual: z.number().int().nonnegative(),
  destinations: z
    .array(
      z.object({
        host: z.string(),
        port: z.number().int(),
        allowed: z.number().int().nonnegative(),
        denied: z.number().int().nonnegative(),
      }),
    )
    .max(EGRESS_SUMMARY_MAX_KEYS),
  /** Attempts to destinations beyond the first EGRESS_SUMMARY_MAX_KEYS. */
  other: z.object({ allowed: z.number().int().nonnegative(), denied: z.number().int().nonnegative() }),
  /** Attempts per reason (at most EGRESS_SUMMARY_MAX_KEYS reasons, then `other`). */
  reasons: z.record(z.string(), z.number().int().nonnegative()),
  complete: z.boolean(),
});
export type EgressSummary = z.infer<typeof egressSummarySchema>;

/** What one command did in the sandbox; output is bounded to a tail. */
export const commandOutcomeSchema = z.object({
  exitCode: z.number().int(),
  timedOut: z.boolean(),
  durationMs: z.number().int().nonnegative(),
  /** Last bytes of combined stdout/stderr (bounded). */
  outputTail: z.string(),
  /** sha256 of the full output. */
  outputSha256: z.string(),
  outputBytes: z.number().int().nonnegative(),
  /** The kernel's OOM killer ended the command (memory limit). */
  oomKilled: z.boolean().optional(),
  /**
   * Network attempts through the egress proxy while the command ran (policy `allowlist`): the
   * first EGRESS_INDIVIDUAL_ATTEMPTS one by one; `egressSummary` counts all of them.
   */
  egress: z.array(egressAttemptSchema).optional(),
  /** Counts of every attempt through the run's egress proxy (bounded keys; see egressSummarySchema). */
  egressSummary: egressSummarySchema.optional(),
  /** The output as stored in the artifact store (at most CHOIROS_MAX_LOG_BYTES of it). */
  log: z
    .object({
      digest: z.string(),
      /** Bytes stored (≤ the bound). */
      bytes: z.number().int().nonnegative(),
      /** True when the output exceeded the bound and only its head was stored. */
      truncated: z.boolean(),
    })
    .optional(),
});
export type CommandOutcome = z.infer<typeof commandOutcomeSchema>;

/** Where a command's output went: an artifact named by its sha256. */
export type StoredLog = NonNullable<CommandOutcome['log']>;

/** Result of one verifier in a run. */
export const verifierOutcomeSchema = commandOutcomeSchema.extend({
  id: z.string(),
  result: z.enum(VERIFIER_RESULTS),
  /** Digest of the verifier report (canonical JSON) in the artifact store; `npm run verdict -- <digest>` re-checks it. */
  reportDigest: z.string().optional(),
  /** Results of every attempt, first to last, when the mood reran or confirmed the verifier. */
  attempts: z.array(z.enum(VERIFIER_RESULTS)).optional(),
  /** The attempts disagreed. */
  flaky: z.boolean().optional(),
});
export type VerifierOutcome = z.infer<typeof verifierOutcomeSchema>;

/** The verifier plan a run used (see verifier-plan.ts). */
export const runPlanViewSchema = z.object({
  planId: z.string(),
  verifierIds: z.array(z.string()),
  unknownRequired: z.array(z.string()),
  touchedPaths: z.array(z.string()),
});
export type RunPlanView = z.infer<typeof runPlanViewSchema>;

/** A run in a listing (`GET /v1/runs`): from visibility, without per-run queries. */
export const runSummarySchema = z.object({
  runId: z.string(),
  status: runStatusSchema,
  tenant: z.string(),
  userId: z.string(),
  mood: moodSchema,
  repo: z.string(),
  workItem: z.object({ id: z.string(), description: z.string() }),
  createdAt: z.string(),
  closedAt: z.string().optional(),
});
export type RunSummary = z.infer<typeof runSummarySchema>;

export const runListPageSchema = z.object({
  runs: z.array(runSummarySchema),
  nextPageToken: z.string().optional(),
});

/** Query of `GET /v1/runs`. */
export const runListQuerySchema = z
  .object({
    status: runStatusSchema.optional(),
    pageSize: z.coerce.number().int().min(1).max(100).default(20),
    pageToken: z
      .string()
      .regex(/^[A-Za-z0-9_-]{1,4096}$/)
      .optional(),
    userId: z
      .string()
      .regex(/^[A-Za-z0-9_-]{1,64}$/)
      .optional(),
  })
  .strict();

/** A verified identity acting on a run (from the token, never from a body). */
export const actorSchema = z.object({
  userId: z.string(),
  tenant: z.string(),
  tokenId: z.string().optional(),
});
export type Actor = z.infer<typeof actorSchema>;

export const approvalViewSchema = z.object({
  requirement: z.enum(['owner', 'independent']),
  quorum: z.number().int(),
  reasons: z.array(z.string()),
  deadline: z.string(),
  approvals: z.array(actorSchema.extend({ at: z.string(), comment: z.string().optional() })),
  decision: z.enum(['approved', 'rejected', 'timed_out']).optional(),
  decidedBy: actorSchema.optional(),
});
export type ApprovalView = z.infer<typeof approvalViewSchema>;

export const INTERRUPT_KINDS = ['REQUEST_QUESTION', 'REQUEST_REVIEW', 'REQUEST_APPROVAL'] as const;

/** A typed question a run asks a human, with a deadline and a safe default. */
export const interruptViewSchema = z.object({
  id: z.string(),
  kind: z.enum(INTERRUPT_KINDS),
  question: z.string(),
  options: z.array(z.string()),
  defaultAction: z.string(),
  deadline: z.string(),
  status: z.enum(['open', 'answered', 'timed_out']),
  answer: z.string().optional(),
  answeredBy: actorSchema.optional(),
});
export type InterruptView = z.infer<typeof interruptViewSchema>;

/** Where a committed run's branch went (remote repositories only, decision 0019). */
export const deliveryViewSchema = z.object({
  status: z.enum(['pushed', 'already_present', 'failed']),
  /** The branch on the origin, `refs/heads/choiros/run/<runId>`. */
  remoteRef: z.string(),
  commit: z.string(),
  attempt: z.number().int(),
  at: z.string(),
  /** The worker host whose mirror holds the branch (a retry pushes from there). */
  hostId: z.string().optional(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
  /** The pull request the tenant's forge opened for it, when one is configured (decision 0020). */
  pullRequest: z
    .object({ url: z.string().nullable(), number: z.number().int().nullable(), forge: z.string() })
    .optional(),
});
export type DeliveryView = z.infer<typeof deliveryViewSchema>;

/** The run as the API reports it (`GET /v1/runs/:runId`). */
export const runViewSchema = z.object({
  runId: z.string(),
  status: runStatusSchema,
  tenant: z.string(),
  userId: z.string(),
  mood: moodSchema,
  repo: z.string(),
  baseRef: z.string(),
  workItem: z.object({ id: z.string(), description: z.string(), riskTier: z.string() }),
  /** Place in the fairness queue when the run was queued (1 = next); absent once admitted. */
  queuePosition: z.number().int().optional(),
  approval: approvalViewSchema.optional(),
  interrupts: z.array(interruptViewSchema).optional(),
  /** The earlier run this one reruns. */
  rerunOf: z.string().optional(),
  graph: z.object({ graphId: z.string(), itemId: z.string(), attempt: z.number().int() }).optional(),
  /** The sandbox image the run executed in (content id), for reruns. */
  imageId: z.string().optional(),
  branch: z.string().optional(),
  commit: z.string().optional(),
  baseCommit: z.string().optional(),
  /** Remote repositories: the push of `branch` back to the origin (absent for local ones). */
  delivery: deliveryViewSchema.optional(),
  execution: commandOutcomeSchema.optional(),
  plan: runPlanViewSchema.optional(),
  verifiers: z.array(verifierOutcomeSchema),
  createdAt: z.string(),
  startedAt: z.string().optional(),
  finishedAt: z.string().optional(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
  events: z.object({ emitted: z.number().int(), published: z.number().int() }),
});
export type RunView = z.infer<typeof runViewSchema>;
