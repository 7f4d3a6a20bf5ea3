// NATS subjects and JetStream names of the job service, in one place.
export const SUBMIT_SUBJECT = 'jobs.submit';
export const DEADLETTER_SUBJECT = 'jobs.deadletter';
export const eventsSubject = (jobId: string) => `jobs.events.${jobId}`;
/** Each worker publishes engine stats here every few seconds (core NATS, not stored). */
export const workerStatsSubject = (host: string) => `workers.stats.${host.replace(/[.*> ]/g, '_')}`;

export const JOBS_STREAM = 'SPECONTEXT_JOBS';
export const EVENTS_STREAM = 'SPECONTEXT_EVENTS';
export const DEADLETTER_STREAM = 'SPECONTEXT_DEADLETTER';
export const INTAKE_CONSUMER = 'specontext-intake';

/** Header carrying the reason a message was dead-lettered. */
export const REASON_HEADER = 'Specontext-Reason';
export const ORIGINAL_SUBJECT_HEADER = 'Specontext-Original-Subject';
