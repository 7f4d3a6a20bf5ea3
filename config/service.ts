// Configuration of the job service (worker, API, NATS intake). Where to reach
// Temporal and NATS, and the data dir, come from the stack's config
// (config/stack.ts); this file adds the service's own SPECONTEXT_* variables.
import path from 'node:path';
import { z } from 'zod';
import { bool, int, port, section, str } from './env';
import { fromRoot } from './root';
import { stackConfig } from './stack';

export function serviceConfig(env: NodeJS.ProcessEnv = process.env) {
  const stack = stackConfig(env);
  const c = section(
    {
      SPECONTEXT_BLOB_STORE: z.enum(['fs', 'nats']).default('fs'),
      SPECONTEXT_BLOB_BUCKET: str('specontext-blobs'),
      SPECONTEXT_MODEL: str('models/smollm2-135m-instruct'),
      SPECONTEXT_DEVICE: z
        .string()
        .regex(/^(cpu|cuda:\d+)$/, 'expected cpu or cuda:N')
        .default('cpu'),
      SPECONTEXT_THREADS: int(0),
      SPECONTEXT_MAX_BATCH: int(4, 1),
      SPECONTEXT_MAX_CONTEXT: int(0),
      // SpeContext's retrieval head (a distilled model directory; unset: the
      // recommended head) and fallback threshold (unset: the head's own).
      SPECONTEXT_DLM: z.string().min(1).optional(),
      SPECONTEXT_FALLBACK: z.coerce.number().min(0).lt(1).optional(),
      SPECONTEXT_API_HOST: str('127.0.0.1'),
      SPECONTEXT_API_PORT: port(8080),
      SPECONTEXT_MAX_DOCUMENT_BYTES: int(4 * 1024 * 1024, 1),
      SPECONTEXT_MAX_BATCH_BYTES: int(256 * 1024 * 1024, 1),
      SPECONTEXT_BATCH_CONCURRENCY: int(8, 1),
      SPECONTEXT_PROGRESS_INTERVAL_MS: int(500, 50),
      SPECONTEXT_NATS_INTAKE: bool(true),
      // This worker's host name for routing (default: the machine's hostname).
      SPECONTEXT_WORKER_HOST: z
        .string()
        .regex(/^[A-Za-z0-9_-]+$/, 'expected letters, digits, _ or -')
        .optional(),
      // How long a retry waits for the host that holds its checkpoint before any
      // host takes it (and recomputes); 0: no host affinity.
      SPECONTEXT_AFFINITY_WAIT_MS: int(30_000),
      // Generated tokens carried in heartbeats, so a retry on any host can re-prefill
      // them instead of generating them again; longer outputs carry their first ones.
      SPECONTEXT_HEARTBEAT_MAX_TOKENS: int(32_768),
    },
    env,
  );
  return {
    temporal: {
      address: stack.temporal.address,
      namespace: stack.temporal.namespace,
      taskQueue: stack.temporal.taskQueue,
    },
    nats: { url: stack.nats.url, intake: c.SPECONTEXT_NATS_INTAKE },
    dataDir: stack.dataDir,
    blobs: {
      kind: c.SPECONTEXT_BLOB_STORE,
      dir: path.join(stack.dataDir, 'blobs'),
      bucket: c.SPECONTEXT_BLOB_BUCKET,
    },
    engine: {
      model: fromRoot(c.SPECONTEXT_MODEL),
      device: c.SPECONTEXT_DEVICE as 'cpu' | `cuda:${number}`,
      threads: c.SPECONTEXT_THREADS,
      maxBatch: c.SPECONTEXT_MAX_BATCH,
      maxContext: c.SPECONTEXT_MAX_CONTEXT || undefined,
      dlm: c.SPECONTEXT_DLM === undefined ? undefined : fromRoot(c.SPECONTEXT_DLM),
      fallback: c.SPECONTEXT_FALLBACK,
    },
    api: {
      host: c.SPECONTEXT_API_HOST,
      port: c.SPECONTEXT_API_PORT,
      maxDocumentBytes: c.SPECONTEXT_MAX_DOCUMENT_BYTES,
      maxBatchBytes: c.SPECONTEXT_MAX_BATCH_BYTES,
    },
    resume: {
      host: c.SPECONTEXT_WORKER_HOST,
      hostWaitMs: c.SPECONTEXT_AFFINITY_WAIT_MS,
      heartbeatMaxTokens: c.SPECONTEXT_HEARTBEAT_MAX_TOKENS,
    },
    batchConcurrency: c.SPECONTEXT_BATCH_CONCURRENCY,
    progressIntervalMs: c.SPECONTEXT_PROGRESS_INTERVAL_MS,
  };
}

export type ServiceConfig = ReturnType<typeof serviceConfig>;
