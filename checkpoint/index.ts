export { type CheckpointConfig, checkpointConfig } from './config';
export {
  type CheckpointDeps,
  type PriorAttempt,
  planCheckpointResume,
  type Resume,
  type ResumePlan,
  resumeCounters,
} from './resume';
export { CheckpointStore, type CheckpointStoreOptions, type CheckpointUsage } from './store';
