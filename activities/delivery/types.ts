/** Delivery activities' inputs and results (workflows import these as types only). */

export interface DeliverInput {
  tenant: string;
  /** The run's (or graph's) repository: an https URL (decision 0019). */
  repo: string;
  /** `choiros/run/<runId>` or `choiros/graph/<graphId>`. */
  branch: string;
  /** The commit the branch must carry on the origin. */
  commit: string;
}

export interface DeliverResult {
  status: 'pushed' | 'already_present';
  remoteRef: string;
  commit: string;
  /** Whether the tenant has a forge that opens pull requests (decision 0020). */
  forge: boolean;
}

export interface PullRequestInput {
  tenant: string;
  repo: string;
  /** The delivered branch. */
  head: string;
  /** The run's base ref: the pull request targets it when it names a branch, else the forge's `defaultBase`. */
  baseRef: string;
  title: string;
  /** Markdown with the run's receipts (verifier results, digests). */
  body: string;
}

export interface PullRequestResult {
  forge: string;
  url: string | null;
  number: number | null;
  /** True when the forge already had an open pull request for this head. */
  existing: boolean;
}

export interface DeliveryActivities {
  /** Pushes the branch from the tenant's mirror to the origin with a lease; idempotent. */
  deliverBranch(input: DeliverInput): Promise<DeliverResult>;
  /** Opens a pull request for a delivered branch through the tenant's forge. */
  openPullRequest(input: PullRequestInput): Promise<PullRequestResult>;
}
