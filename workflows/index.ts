/** Every workflow, re-exported for the worker's `workflowsPath`. */
export { runWorkflow } from './run';
export { admissionWorkflow } from './admission';
export { workGraphWorkflow } from './work-graph';
export { rebuildWorkflow } from './rebuild';
export { deliveryWorkflow } from './delivery';
