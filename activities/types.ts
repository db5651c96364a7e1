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
}

export interface AdmissionActivities {
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
}
