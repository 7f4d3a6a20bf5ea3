// Connects to NATS and makes sure the service's streams exist: job submissions
// (deduplicated by Nats-Msg-Id), job events, and the dead letters.
import { AckPolicy, type JetStreamManager, jetstreamManager } from '@nats-io/jetstream';
import { type NatsConnection, nanos } from '@nats-io/nats-core';
import { connect } from '@nats-io/transport-node';
import {
  DEADLETTER_STREAM,
  DEADLETTER_SUBJECT,
  EVENTS_STREAM,
  INTAKE_CONSUMER,
  JOBS_STREAM,
  SUBMIT_SUBJECT,
} from './subjects';

const HOUR = 3600_000;

export async function connectNats(url: string, name: string): Promise<NatsConnection> {
  return connect({ servers: url, name, maxReconnectAttempts: -1, reconnectTimeWait: 500 });
}

async function ensureStream(
  jsm: JetStreamManager,
  config: Parameters<JetStreamManager['streams']['add']>[0] & { name: string },
): Promise<void> {
  try {
    await jsm.streams.info(config.name);
    await jsm.streams.update(config.name, config);
  } catch {
    await jsm.streams.add(config);
  }
}

/** Idempotent: safe for every process (API, worker, CLI) to call at start. */
export async function ensureStreams(nc: NatsConnection): Promise<JetStreamManager> {
  const jsm = await jetstreamManager(nc);
  await ensureStream(jsm, {
    name: JOBS_STREAM,
    subjects: [SUBMIT_SUBJECT],
    max_age: nanos(7 * 24 * HOUR),
    // A message re-published with the same Nats-Msg-Id inside this window is dropped.
    duplicate_window: nanos(HOUR),
  });
  await ensureStream(jsm, {
    name: EVENTS_STREAM,
    subjects: ['jobs.events.>'],
    max_age: nanos(24 * HOUR),
    max_msgs_per_subject: 10_000,
    duplicate_window: nanos(HOUR),
  });
  await ensureStream(jsm, {
    name: DEADLETTER_STREAM,
    subjects: [DEADLETTER_SUBJECT],
    max_age: nanos(7 * 24 * HOUR),
  });
  try {
    await jsm.consumers.info(JOBS_STREAM, INTAKE_CONSUMER);
  } catch {
    await jsm.consumers.add(JOBS_STREAM, {
      durable_name: INTAKE_CONSUMER,
      ack_policy: AckPolicy.Explicit,
      ack_wait: nanos(60_000),
      max_deliver: 10,
      filter_subject: SUBMIT_SUBJECT,
    });
  }
  return jsm;
}
