/** Deploy activities of the self-rebuild: one service at a time through the target's Deployer. */
import { Context } from '@temporalio/activity';
import type Docker from 'dockerode';
import type { Logger } from 'pino';
import type { DeployerKind } from '../../contracts';
import { heartbeatWhile } from '../heartbeat';
import type { DeployActivities } from '../images/types';
import type { Deployer } from './deployer';
import { ComposeDeployer } from './compose';
import { DockerDeployer } from './docker';
import { noopDeployer } from './noop';

export function createDeployActivities(deps: {
  docker: Docker;
  logger: Logger;
  /** Overrides per deployer kind (tests); the docker, compose and noop deployers otherwise. */
  deployers?: Partial<Record<DeployerKind, Deployer>>;
}): DeployActivities {
  const deployers: Record<DeployerKind, Deployer> = {
    docker: new DockerDeployer(deps.docker, deps.logger),
    compose: new ComposeDeployer(deps.docker, deps.logger),
    noop: noopDeployer,
    ...deps.deployers,
  };
  const of = (kind: DeployerKind): Deployer => deployers[kind];
  return {
    deployService: (input) => of(input.target.deployer).deploy(input),
    checkHealth: (input) =>
      heartbeatWhile(
        () => ({ service: input.service.name, checking: 'health' }),
        1000,
        () => of(input.target.deployer).health(input, Context.current().cancellationSignal),
      ),
    rollbackService: (input) => of(input.target.deployer).rollback(input, input.previousImage),
    finalizeService: (input) => of(input.target.deployer).finalize(input),
  };
}
