export { type CheckpointConfig, checkpointConfig } from './config';
export { CheckpointMirror, type MirrorCounters } from './mirror';
export {
  type CheckpointDeps,
  type PriorAttempt,
  planResume,
  type Resume,
  type ResumePlan,
  reprefillable,
  resumeCounters,
} from './resume';
export { CheckpointStore, type CheckpointStoreOptions, type CheckpointUsage } from './store';
