// GET /v1/jobs/:id/events as server-sent events: first the job's current view,
// then its events from the events stream (replayed from the start, so nothing
// between the snapshot and the subscription is lost), including the generated
// text as it streams. Ends after the job's terminal event.
import { DeliverPolicy, jetstream } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import type { FastifyReply } from 'fastify';
import { isTerminal } from '../nats/events';
import { EVENTS_STREAM, eventsSubject } from '../nats/subjects';
import type { JobEvent } from '../workflows/types';
import type { JobView } from './jobs';

const KEEPALIVE_MS = 15_000;

export async function streamJobEvents(
  nc: NatsConnection,
  view: JobView,
  reply: FastifyReply,
): Promise<void> {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
  });
  const send = (event: string, data: unknown) =>
    res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  send('status', view);
  if (['completed', 'failed', 'cancelled'].includes(view.status)) {
    res.end();
    return;
  }
  const consumer = await jetstream(nc).consumers.get(EVENTS_STREAM, {
    filter_subjects: [eventsSubject(view.id)],
    deliver_policy: DeliverPolicy.All,
  });
  const messages = await consumer.consume();
  const keepalive = setInterval(() => res.write(': keepalive\n\n'), KEEPALIVE_MS);
  const close = () => messages.stop();
  res.on('close', close);
  try {
    for await (const m of messages) {
      const event = m.json<JobEvent>();
      send(event.type, event);
      if (isTerminal(event)) break;
    }
  } finally {
    clearInterval(keepalive);
    res.off('close', close);
    messages.stop();
    res.end();
  }
}
