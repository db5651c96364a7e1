/** Signal/query/update definitions of the workflows, importable by workflows, API and tests alike. */
import { defineQuery } from '@temporalio/workflow';
import type { RunView } from './run';

/** Current view of a run; answered by the run workflow at any time. */
export const runViewQuery = defineQuery<RunView>('runView');
