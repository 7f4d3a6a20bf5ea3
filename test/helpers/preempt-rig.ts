// What the preemption tests share: a job with a long enough greedy answer,
// its uninterrupted text as the reference, and the real clients (Temporal,
// NATS, blob store, the HTTP API) to start it and read it back.
import type { NatsConnection } from '@nats-io/nats-core';
import { Client, Connection } from '@temporalio/client';
import { messagesFor } from '../../activities/prompt';
import { type RunningApi, startApi } from '../../api';
import type { JobView } from '../../api/jobs';
import { openBlobStore } from '../../blobstore';
import type { BlobStore } from '../../blobstore/store';
import type { ServiceConfig } from '../../config/service';
import { openEngine } from '../../engine';
import { connectNats } from '../../nats/connection';
import { documentJobWorkflow } from '../../workflows';
import type { GenerationOptions } from '../../workflows/types';
import { SMOLLM2 } from '../engine-helpers';
import { waitFor } from '../service-helpers';

/**
 * The jobs' heartbeat timeout: how soon Temporal retries an attempt whose worker was killed.
 * Short keeps the tests quick; 4 s proved too short on a loaded 2-core machine, where a live
 * worker's heartbeats were late and its attempts timed out over and over.
 */
export const DEAD_WORKER_MS = 10_000;

// Answers are short and greedy, so the CPU keeps up (CI has two cores).
export const OPTIONS: GenerationOptions = { maxTokens: 56, temperature: 0, seed: 0 };
export const DOC =
  'The lighthouse on Gull Rock was kept by Ines for forty years. Each night she climbed ' +
  'one hundred and twelve steps to light the lamp, and each morning she wrote the weather ' +
  'in a green notebook. During the great storm of 1953 the lamp failed twice.';
export const ASK = 'Tell the story of the storm night in detail.';

/** A random decode step past the first checkpoint (every `every` tokens) and before the end. */
export const randomStep = (every: number) =>
  every + 2 + Math.floor(Math.random() * (OPTIONS.maxTokens / 2 - every));

export class PreemptRig {
  client!: Client;
  nc!: NatsConnection;
  blobs!: BlobStore;
  /** The uninterrupted run's answer. */
  reference = '';
  private connection?: Connection;
  private api?: RunningApi;

  constructor(private readonly config: ServiceConfig) {}

  async open(name: string): Promise<void> {
    const engine = await openEngine({ model: SMOLLM2, threads: 2 });
    this.reference = (
      await engine.generate({
        messages: messagesFor(DOC, ASK),
        maxTokens: OPTIONS.maxTokens,
        temperature: 0,
        seed: 0,
      })
    ).text;
    await engine.close();
    this.connection = await Connection.connect({ address: this.config.temporal.address });
    this.client = new Client({
      connection: this.connection,
      namespace: this.config.temporal.namespace,
    });
    this.nc = await connectNats(this.config.nats.url, name);
    this.blobs = await openBlobStore(this.config.blobs, this.nc);
    this.api = await startApi(this.config, { port: 0 });
  }

  async close(): Promise<void> {
    await this.api?.stop();
    await this.blobs?.close();
    await this.nc?.drain();
    await this.connection?.close();
  }

  async view(id: string): Promise<JobView> {
    return (await (await fetch(`${this.api?.url}/v1/jobs/${id}`)).json()) as JobView;
  }

  /** Tokens generated so far by a job's instruction (live progress from the API). */
  async tokensDone(id: string): Promise<number> {
    return (await this.view(id)).progress?.instructions[0]?.tokensDone ?? 0;
  }

  /** Starts the job (DOC, ASK) on the service's task queue; a dead worker shows in DEAD_WORKER_MS. */
  async startJob(id: string): Promise<void> {
    await this.client.workflow.start(documentJobWorkflow, {
      taskQueue: this.config.temporal.taskQueue,
      workflowId: id,
      args: [
        {
          jobId: id,
          documentRef: await this.blobs.put(DOC),
          instructions: [ASK],
          options: OPTIONS,
          truncation: 'reject',
          heartbeatTimeoutMs: DEAD_WORKER_MS,
        },
      ],
    });
  }

  finished(id: string): Promise<JobView> {
    return waitFor(
      `job ${id}`,
      async () => {
        const v = await this.view(id);
        return ['completed', 'failed', 'cancelled'].includes(v.status) && v;
      },
      240_000,
    );
  }
}
