/** Query and update definitions of the rebuild workflow, importable by workflows, API and tests alike. */
import { defineQuery, defineUpdate } from '@temporalio/workflow';
import type { RebuildDecision, RebuildView } from './rebuild';

/** Current view of a rebuild; answered by the rebuild workflow at any time. */
export const rebuildViewQuery = defineQuery<RebuildView>('rebuildView');

/**
 * Approve or reject a rebuild waiting for approval. The validator refuses the update (nothing is
 * written to history) unless the rebuild is in `awaiting_approval`; the API checks `rebuild:approve`.
 */
export const rebuildDecisionUpdate = defineUpdate<RebuildView, [RebuildDecision]>('rebuildDecision');
