// Job events on `jobs.events.<id>`, stored in the events stream so a late
// subscriber (SSE, CLI --wait) can replay them. Terminal events carry a
// Nats-Msg-Id of `<id>.<type>`: a retried publish still yields one event.
import { type JetStreamClient, jetstream } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import type { JobEvent } from '../workflows/types';
import { eventsSubject } from './subjects';

export class JobEvents {
  private readonly js: JetStreamClient;

  constructor(private readonly nc: NatsConnection) {
    this.js = jetstream(nc);
  }

  /** Terminal events: stored, deduplicated by job and type. */
  async publish(event: JobEvent): Promise<void> {
    const data = JSON.stringify({ ...event, at: new Date().toISOString() });
    const msgID = event.type === 'progress' ? undefined : `${event.jobId}.${event.type}`;
    await this.js.publish(eventsSubject(event.jobId), data, msgID ? { msgID } : undefined);
  }

  /** Progress events: fire and forget (the stream still keeps them for replay). */
  progress(event: Extract<JobEvent, { type: 'progress' }>): void {
    this.nc.publish(eventsSubject(event.jobId), JSON.stringify(event));
  }
}

export function isTerminal(event: Pick<JobEvent, 'type'>): boolean {
  return event.type === 'completed' || event.type === 'failed' || event.type === 'cancelled';
}
