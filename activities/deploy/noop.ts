/** The `noop` deployer: builds and approvals without touching any running service. */
import type { Deployer } from './deployer';

export const noopDeployer: Deployer = {
  deploy: (input) =>
    Promise.resolve({
      service: input.service.name,
      image: input.images[input.service.image] ?? '',
      previousImage: null,
      changed: false,
    }),
  health: () => Promise.resolve({ healthy: true, detail: 'noop deployer: nothing deployed', durationMs: 0 }),
  rollback: () => Promise.resolve({ restoredImage: null, healthy: true }),
  finalize: () => Promise.resolve(),
};
