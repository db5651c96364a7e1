/** Work graph request validation: schema, verifier ids, repository kind and dependency order. */
import {
  AppError,
  isGitUrl,
  isRemoteRepoUrl,
  orderWorkGraph,
  workGraphRequestSchema,
  type VerifierSpec,
  type WorkGraphRequest,
} from '../../contracts';
import { validationError } from '../errors';

/**
 * Validates a `POST /v1/work-graphs` body: each item needs known verifiers (at least one, as a run
 * does), the repository must be a local path or an https URL (run branches of `file://` repositories
 * stay in a worker's mirror, out of the integration branch's reach; https ones are delivered), and the dependencies must order: duplicates,
 * unknown dependencies and cycles are 400s whose detail names the items (`dependency cycle: a → b → a`).
 */
export function parseWorkGraphRequest(
  body: unknown,
  verifiers: { get(id: string): VerifierSpec | undefined },
): WorkGraphRequest {
  const parsed = workGraphRequestSchema.safeParse(body);
  if (!parsed.success) throw validationError(parsed.error);
  const graph = parsed.data;
  if (isGitUrl(graph.repo) && !isRemoteRepoUrl(graph.repo)) {
    throw new AppError(
      'validation_failed',
      'repo: work graphs need a local repository path or an https URL, not a file URL',
      {
        errors: [
          {
            field: 'repo',
            message: 'work graphs need a local repository path or an https URL, not a file URL',
          },
        ],
      },
    );
  }
  const unknown = graph.items.flatMap((item, i) =>
    item.requiredVerifiers
      .filter((id) => !verifiers.get(id))
      .map((id) => ({ field: `items.${i}.requiredVerifiers`, message: `unknown verifier ${id}` })),
  );
  if (unknown.length > 0) {
    const ids = [...new Set(unknown.map((u) => u.message.slice('unknown verifier '.length)))];
    throw new AppError('unknown_verifier', `unknown verifier id(s): ${ids.join(', ')}`, { errors: unknown });
  }
  const unverified = graph.items
    .map((item, i) => ({ item, i }))
    .filter(({ item }) => item.requiredVerifiers.length === 0)
    .map(({ item, i }) => ({
      field: `items.${i}.requiredVerifiers`,
      message: `item ${item.id}: at least one verifier is needed to verify a run`,
    }));
  if (unverified.length > 0) {
    throw new AppError('validation_failed', unverified.map((e) => `${e.field}: ${e.message}`).join('; '), {
      errors: unverified,
    });
  }
  const order = orderWorkGraph(graph.items);
  if (!order.ok) {
    throw new AppError(order.code, order.message, {
      errors: [{ field: 'items', message: order.message }],
    });
  }
  return graph;
}
