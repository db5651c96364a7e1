/** Inputs and outputs of the self-rebuild's build-queue activities; workflows import these with `import type`. */
import type { RebuildImageSpec, RebuildServiceSpec, RebuildTarget } from '../../contracts';

export interface RebuildRef {
  rebuildId: string;
  target: RebuildTarget;
}

export interface SuiteResult {
  suite: string;
  passed: boolean;
  exitCode: number;
  timedOut: boolean;
  durationMs: number;
  outputTail: string;
}

export interface BuiltImage {
  name: string;
  /** `<image>:<commit>` */
  tag: string;
  imageId: string;
  durationMs: number;
  cachedSteps: number;
  totalSteps: number;
  /** The tag already existed with this commit's label: nothing was built. */
  reused: boolean;
}

/** Heartbeat details of a running build: what the Temporal UI shows as the activity's progress. */
export interface BuildProgress {
  image: string;
  step: number;
  totalSteps: number;
  cachedSteps: number;
  line: string;
}

export interface BuildActivities {
  /** Resolves the target's ref to a full commit sha (`ref_not_found` when it names nothing). */
  resolveRef(input: RebuildRef & { ref: string }): Promise<{ commit: string }>;
  /** Runs one verifier suite in a network-less sandbox on the commit's worktree. */
  runSuite(
    input: RebuildRef & { commit: string; suite: string; owner: { tenant: string; userId: string } },
  ): Promise<SuiteResult>;
  /** Builds `<image>:<commit>` from the commit's worktree; heartbeats BuildProgress. */
  buildImage(input: RebuildRef & { commit: string; image: RebuildImageSpec }): Promise<BuiltImage>;
  /** Tags and pushes an image when a registry is configured on the build host; `remote` null otherwise. */
  pushImage(input: RebuildRef & { commit: string; tag: string }): Promise<{ remote: string | null }>;
  /** Removes the rebuild's worktree. Idempotent. */
  cleanupRebuild(input: RebuildRef): Promise<void>;
}

export interface ServiceDeployInput extends RebuildRef {
  commit: string;
  service: RebuildServiceSpec;
  /** Image role name → tag, for the service's image and `{{image:<name>}}` templates. */
  images: Record<string, string>;
}

export interface DeployResult {
  service: string;
  image: string;
  previousImage: string | null;
  /** False when the service already ran this commit (a retried or resumed deploy). */
  changed: boolean;
}

export interface HealthResult {
  healthy: boolean;
  detail: string;
  durationMs: number;
}

export interface DeployActivities {
  deployService(input: ServiceDeployInput): Promise<DeployResult>;
  checkHealth(input: ServiceDeployInput): Promise<HealthResult>;
  /** Puts the previous container (or image) back and checks its health. */
  rollbackService(
    input: ServiceDeployInput & { previousImage: string | null },
  ): Promise<{ restoredImage: string | null; healthy: boolean }>;
  /** After a healthy deploy: removes the kept previous container (its image stays for a later rollback). */
  finalizeService(input: ServiceDeployInput): Promise<void>;
}
