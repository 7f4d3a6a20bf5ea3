// Helpers shared by the service's integration tests (real Temporal, NATS,
// engine and model): config for an isolated task queue, polling, event reads.
import { DeliverPolicy, jetstream } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import { serviceConfig } from '../config/service';
import { EVENTS_STREAM, eventsSubject } from '../nats/subjects';
import type { JobEvent } from '../workflows/types';

/** Service config on the test stack, with a task queue of this test file's own. */
export function testServiceConfig(name: string, extra: Record<string, string> = {}) {
  return serviceConfig({
    ...process.env,
    SPECONTEXT_TASK_QUEUE: `${name}-${process.pid}`,
    SPECONTEXT_MAX_BATCH: '4',
    SPECONTEXT_THREADS: '2',
    SPECONTEXT_PROGRESS_INTERVAL_MS: '100',
    ...extra,
  });
}

export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined | false>,
  timeoutMs = 90_000,
  everyMs = 250,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Every event stored so far on `jobs.events.<id>`. */
export async function storedEvents(nc: NatsConnection, jobId: string): Promise<JobEvent[]> {
  const consumer = await jetstream(nc).consumers.get(EVENTS_STREAM, {
    filter_subjects: [eventsSubject(jobId)],
    deliver_policy: DeliverPolicy.All,
  });
  const out: JobEvent[] = [];
  for (;;) {
    const m = await consumer.next({ expires: 1_000 });
    if (!m) return out;
    out.push(m.json<JobEvent>());
  }
}
