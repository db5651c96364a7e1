/** The shared language of the platform. Pure: no Node APIs, no I/O. */
export * from './ids';
export * from './errors';
export * from './constants';
export * from './run';
export * from './events';
export * from './verifiers';
export * from './workflow-defs';
export * from './canonical';
export * from './event-payloads';
export * from './schema-compat';
export * from './sha256';
export * from './glob';
export * from './verifier-plan';
export * from './verdict';
export * from './rebuild';
export * from './rebuild-defs';
