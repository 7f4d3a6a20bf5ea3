// Workflow entry points, bundled by the worker. Signals and queries are
// re-exported so clients import them from one place.
export { batchJobWorkflow } from './batch';
export * from './definitions';
export { documentJobWorkflow } from './document';
