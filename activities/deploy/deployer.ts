/** The Deployer interface: how a rebuilt target's services are replaced, health-checked and rolled back. */
import type { DeployResult, HealthResult, ServiceDeployInput } from '../images/types';

export interface Deployer {
  /**
   * Replaces the service with the commit's image. Idempotent: when the service already runs this
   * commit (a retried or resumed deploy), nothing is replaced and `changed` is false.
   */
  deploy(input: ServiceDeployInput): Promise<DeployResult>;
  /** Polls the service until it answers healthy (with the commit, when asked) or the timeout passes. */
  health(input: ServiceDeployInput, signal?: AbortSignal): Promise<HealthResult>;
  /** Puts the previous release back (kept container, else the previous image); then checks its health. */
  rollback(
    input: ServiceDeployInput,
    previousImage: string | null,
  ): Promise<{ restoredImage: string | null; healthy: boolean }>;
  /** Forgets the previous container after a healthy deploy; the previous image stays for later rollbacks. */
  finalize(input: ServiceDeployInput): Promise<void>;
}
