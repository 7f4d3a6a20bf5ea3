export { type CheckpointConfig, checkpointConfig } from './config';
export { CheckpointStore, type CheckpointStoreOptions, type CheckpointUsage } from './store';
