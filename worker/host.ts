// The host's identity for routing: each worker also polls a task queue named
// after its host, so a later step of a job (a resume from a checkpoint held in
// this host's memory) can be sent back to it.
import { hostname } from 'node:os';

/** The configured name (SPECONTEXT_WORKER_HOST), else the machine's hostname made queue-safe. */
export function hostName(configured?: string): string {
  return configured ?? hostname().replace(/[^A-Za-z0-9_-]/g, '_');
}

export function hostTaskQueue(taskQueue: string, host = hostName()): string {
  return `${taskQueue}-host-${host}`;
}
