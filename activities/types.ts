/** Activity input/output shapes and the activity interfaces workflows import with `import type`. */
import type {
  AdmissionGrant,
  AdmissionTerms,
  CommandOutcome,
  EventEnvelope,
  Mood,
  NetworkPolicy,
  EgressRule,
  VerifierOutcome,
  VerifierPlan,
} from '../contracts';

export interface CreateSandboxInput {
  runId: string;
  tenant: string;
  userId: string;
  workItemId: string;
  repo: string;
  baseRef: string;
  /** Execution-lane network policy; absent means `none`. */
  network?: NetworkPolicy;
  /** Allowed destinations for policy `allowlist`. */
  egress?: EgressRule[];
  /** Run in exactly this image (content id, `sha256:…`) instead of the configured tag (reruns). */
  imageId?: string;
}

export interface SandboxHandle {
  sandboxId: string;
  hostId: string;
  /** Host-specific task queue: every later sandbox activity of this run goes there. */
  hostQueue: string;
  branch: string;
  baseCommit: string;
  image: string;
  imageId: string;
}

export interface ExecInput {
  sandboxId: string;
  argv: string[];
  timeoutSeconds: number;
}

/** Who a sandbox belongs to; put on container labels. Comes from the workflow input only. */
export interface SandboxOwner {
  tenant: string;
  userId: string;
  workItemId: string;
}

export interface VerifyInput {
  sandboxId: string;
  verifierId: string;
  owner: SandboxOwner;
  /** The image the run's sandbox was created from (its content id), so every lane runs the same bits. */
  imageId?: string;
  /** 1 for the first run of this verifier, higher for mood reruns and confirmations. */
  attempt?: number;
}

export interface PlanInput {
  sandboxId: string;
  mood: Mood;
  /** The work item's required verifier ids. */
  required: string[];
  riskTier: string;
}

export interface CommitInput {
  sandboxId: string;
  message: string;
  authorName: string;
  authorEmail: string;
}

export interface CommitResult {
  branch: string;
  commit: string;
  changedPaths: string[];
}

export interface DestroyInput {
  sandboxId: string;
  /** The run's tenant (its mirror, for URL repositories); absent in runs started before it was passed. */
  tenant?: string;
  /** The run's repository, to remove the worktree registration and branch even if the worktree is gone. */
  repo: string;
  /** Keep the run branch (the run committed); otherwise it is deleted with the worktree. */
  keepBranch: boolean;
}

export interface SandboxActivities {
  createSandbox(input: CreateSandboxInput): Promise<SandboxHandle>;
  execInSandbox(input: ExecInput): Promise<CommandOutcome>;
  runVerifier(input: VerifyInput): Promise<VerifierOutcome>;
  /** Selects the verifier plan from the worktree's touched paths (selectVerifierPlan). */
  planVerifiers(input: PlanInput): Promise<VerifierPlan>;
  commitSandbox(input: CommitInput): Promise<CommitResult>;
  destroySandbox(input: DestroyInput): Promise<{ removed: string[] }>;
  /**
   * The commit a run made before its workspace was removed (a finish step retried after a worker
   * died between removal and answer); null while the workspace exists or without the run's branch.
   */
  findCommit(input: { sandboxId: string; tenant?: string; repo: string }): Promise<CommitResult | null>;
}

/**
 * A step that carries the run's unpublished events (decision 0015): the activity publishes them
 * first, best-effort and in order, and says how many (a prefix) are in the stream. The workflow
 * keeps the rest pending. The events stay in the step's recorded input (republish reads them).
 */
export interface Carried<I> {
  input: I;
  events: EventEnvelope[];
}

export interface CarriedResult<O> {
  value: O;
  /** How many of the carried events, from the first, are in the stream. */
  published: number;
}

/**
 * What a run learns when it joins its tenant's queue and asks the gate at once: admitted, queued
 * at a position, or (`bySignal`) the gate could not answer the query in time and will signal.
 */
export type AdmissionAnswer = AdmissionTerms &
  ({ admitted: true } | { admitted: false; position: number } | { admitted: 'bySignal' });

/** Execute, then (when the command succeeded) plan the verifiers: one host step. */
export interface ExecuteStepInput {
  exec: ExecInput;
  plan: Omit<PlanInput, 'sandboxId'>;
}

export interface ExecuteStepResult {
  execution: CommandOutcome;
  /** Absent when the command failed or timed out (no verifier runs). */
  plan?: VerifierPlan;
}

/** The end of a run on its host: the commit (when approved), the sandbox's removal, the slot's release. */
export interface FinishStepInput {
  commit?: CommitInput;
  destroy: DestroyInput;
  /** Give the admission slot back once the sandbox is gone. */
  release?: { tenant: string; runId: string };
}

export interface FinishStepResult {
  commit?: CommitResult;
  /** Absent when the removal failed: the workflow retries it with the cleanup's own budget. */
  removed?: string[];
  destroyError?: { code: string; message: string };
  released: boolean;
}

/** The run's steps in their lean form (decision 0015): each carries the pending events. */
export interface StepActivities {
  createSandboxStep(input: Carried<CreateSandboxInput>): Promise<CarriedResult<SandboxHandle>>;
  executeStep(input: Carried<ExecuteStepInput>): Promise<CarriedResult<ExecuteStepResult>>;
  verifyStep(input: Carried<VerifyInput>): Promise<CarriedResult<VerifierOutcome>>;
  finishStep(input: Carried<FinishStepInput>): Promise<CarriedResult<FinishStepResult>>;
}

export interface AdmissionActivities {
  /**
   * Joins the queue (signal-with-start, `answerByQuery`) and asks the gate where the run stands;
   * run as a local activity, so its result (with the events it published) is the marker's.
   */
  joinAdmission(input: {
    tenant: string;
    userId: string;
    runId: string;
    events: EventEnvelope[];
  }): Promise<AdmissionAnswer & { published: number; events: EventEnvelope[] }>;
  /** Joins the tenant's fairness queue by signal-with-start; the gate answers by signals to the run. */
  enqueueAdmission(input: { tenant: string; userId: string; runId: string }): Promise<AdmissionTerms>;
  /** Asks the tenant's fairness gate for a slot; starts the gate when it is not running. */
  requestAdmission(input: { tenant: string; userId: string; runId: string }): Promise<AdmissionGrant>;
  /** Gives the slot back (or leaves the queue); idempotent. */
  releaseAdmission(input: { tenant: string; runId: string }): Promise<void>;
}

export interface PublishResult {
  /** Stream sequence of each event, in the order given. */
  acks: { id: string; streamSeq: number; duplicate: boolean }[];
}

export interface EventActivities {
  publishEvents(input: { events: EventEnvelope[] }): Promise<PublishResult>;
  /**
   * The same publish as a local activity: bounded (`timeoutMs` per event) and its result repeats
   * the events, since a local activity's marker records its result and not its input.
   */
  publishEventsLocal(input: {
    events: EventEnvelope[];
    timeoutMs: number;
  }): Promise<PublishResult & { events: EventEnvelope[] }>;
}
