/** Every workflow, re-exported for the worker's `workflowsPath`. */
export { runWorkflow } from './run';
export { rebuildWorkflow } from './rebuild';
