// The NATS way in: a durable JetStream consumer on `jobs.submit`. Each message
// is validated with the same zod schema as the HTTP API and starts a workflow
// whose id is the job id, then is acked. JetStream drops a re-published message
// with the same Nats-Msg-Id, and a redelivered one finds its workflow already
// started: either way, one job. Invalid messages are terminated and copied,
// with the reason, to the dead-letter subject. The consume loop sets itself up
// again after any error (server restart, consumer deleted).
import { type JsMsg, jetstream } from '@nats-io/jetstream';
import { headers, type NatsConnection } from '@nats-io/nats-core';
import { JobRejected, type JobService, jobIdForKey } from '../api/jobs';
import { describeIssues, jobMessageSchema } from '../api/schemas';
import {
  DEADLETTER_SUBJECT,
  INTAKE_CONSUMER,
  JOBS_STREAM,
  ORIGINAL_SUBJECT_HEADER,
  REASON_HEADER,
} from './subjects';

const utf8 = new TextDecoder('utf-8', { fatal: true });
const RETRY_MS = 1_000;

export interface IntakeLog {
  info(msg: string): void;
  warn(msg: string): void;
}

/** Why a message is not a job, or the parsed job with its id. */
export function parseJobMessage(
  data: Uint8Array,
  msgId: string | undefined,
  seq: number,
): { reason: string } | { id: string; job: ReturnType<typeof jobMessageSchema.parse> } {
  let text: string;
  try {
    text = utf8.decode(data);
  } catch {
    return { reason: 'message is not valid UTF-8' };
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    return { reason: `malformed JSON: ${(err as Error).message}` };
  }
  const r = jobMessageSchema.safeParse(json);
  if (!r.success) return { reason: `invalid job: ${describeIssues(r.error)}` };
  const { id, ...job } = r.data;
  // The job id: given, else from the idempotency key or the message id, else
  // from the stream sequence (a redelivery keeps its sequence).
  const key = job.idempotencyKey ?? msgId;
  return { id: id ?? (key ? jobIdForKey(key) : `job-nats-${seq}`), job };
}

export class NatsIntake {
  private stopped = false;
  private loop: Promise<void> | undefined;
  private messages: { stop(): void } | undefined;

  constructor(
    private readonly nc: NatsConnection,
    private readonly jobs: JobService,
    private readonly log: IntakeLog,
  ) {}

  start(): void {
    this.loop ??= this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.messages?.stop();
    await this.loop;
  }

  private async run(): Promise<void> {
    const js = jetstream(this.nc);
    while (!this.stopped) {
      try {
        const consumer = await js.consumers.get(JOBS_STREAM, INTAKE_CONSUMER);
        const messages = await consumer.consume({ max_messages: 16 });
        this.messages = messages;
        if (this.stopped) messages.stop();
        for await (const m of messages) await this.handle(m);
      } catch (err) {
        if (this.stopped) break;
        this.log.warn(`nats intake: ${(err as Error).message}; retrying`);
        await new Promise((r) => setTimeout(r, RETRY_MS));
      }
    }
  }

  private async handle(m: JsMsg): Promise<void> {
    const msgId = m.headers?.get('Nats-Msg-Id') || undefined;
    const parsed = parseJobMessage(m.data, msgId, m.seq);
    if ('reason' in parsed) return this.deadLetter(m, parsed.reason);
    try {
      const { id, created } = await this.jobs.submit(parsed.job, parsed.id);
      this.log.info(`nats intake: job ${id} ${created ? 'started' : 'already exists'}`);
      m.ack();
    } catch (err) {
      if (err instanceof JobRejected) return this.deadLetter(m, err.message);
      // Temporal or the blob store is unavailable: try again later.
      this.log.warn(`nats intake: ${(err as Error).message}; will redeliver`);
      m.nak(2_000);
    }
  }

  private deadLetter(m: JsMsg, reason: string): void {
    const h = headers();
    h.set(REASON_HEADER, reason);
    h.set(ORIGINAL_SUBJECT_HEADER, m.subject);
    const msgId = m.headers?.get('Nats-Msg-Id');
    if (msgId) h.set('Nats-Msg-Id', `deadletter.${msgId}`);
    this.nc.publish(DEADLETTER_SUBJECT, m.data, { headers: h });
    this.log.warn(`nats intake: dead-lettered message ${m.seq}: ${reason}`);
    m.term(reason);
  }
}
