// One worker process: one engine on one device, shared by every activity
// through its continuous batching, so the activity slots equal the engine's
// batch capacity. Polls the service task queue (workflows, generation) and its
// host's own queue (generation routed back to this host). Shutdown (SIGTERM,
// SIGINT, or stop()) stops polling, lets in-flight generation finish within the
// grace time, cancels the rest (Temporal retries it elsewhere), then closes the
// engine.

import { existsSync } from 'node:fs';
import path from 'node:path';
import { Client } from '@temporalio/client';
import {
  bundleWorkflowCode,
  NativeConnection,
  Worker,
  type WorkflowBundle,
} from '@temporalio/worker';
import { createActivities } from '../activities';
import { openBlobStore } from '../blobstore';
import { checkpointConfig } from '../checkpoint/config';
import { CheckpointMirror } from '../checkpoint/mirror';
import { CheckpointStore } from '../checkpoint/store';
import type { ServiceConfig } from '../config/service';
import { openEngine } from '../engine';
import type { Device, Engine } from '../engine/types';
import { connectNats, ensureStreams } from '../nats/connection';
import { JobEvents } from '../nats/events';
import { workerStatsSubject } from '../nats/subjects';
import { hostName, hostTaskQueue } from './host';

const STATS_EVERY_MS = 5_000;

let bundle: Promise<WorkflowBundle> | undefined;
/** Bundled once per process, from the sources (tests) or from dist/ (the CLI). */
export function workflowBundle(): Promise<WorkflowBundle> {
  const index = path.join(__dirname, '..', 'workflows', 'index');
  bundle ??= bundleWorkflowCode({
    workflowsPath: existsSync(`${index}.ts`) ? `${index}.ts` : `${index}.js`,
    logger: {
      log() {},
      trace() {},
      debug() {},
      info() {},
      warn: console.warn,
      error: console.error,
    },
  });
  return bundle;
}

export interface WorkerOptions {
  device?: Device;
  /** Seconds in-flight generation may take to finish after shutdown starts. */
  shutdownGraceS?: number;
  /** An engine opened by the caller (tests share one); closed by the caller then. */
  engine?: Engine;
}

export interface RunningWorker {
  readonly host: string;
  readonly taskQueue: string;
  readonly hostTaskQueue: string;
  readonly engine: Engine;
  /** Resolves when both pollers stopped and everything is closed. */
  readonly done: Promise<void>;
  stop(): Promise<void>;
}

export async function startWorker(c: ServiceConfig, o: WorkerOptions = {}): Promise<RunningWorker> {
  const device = o.device ?? c.engine.device;
  const host = hostName(c.resume.host);
  const ownEngine = !o.engine;
  const engine =
    o.engine ??
    (await openEngine({
      model: c.engine.model,
      device,
      threads: c.engine.threads || undefined,
      maxBatch: c.engine.maxBatch,
      maxContext: c.engine.maxContext,
      dlm: c.engine.dlm,
      fallback: c.engine.fallback,
    }));
  const nc = await connectNats(c.nats.url, `specontext-worker-${host}`);
  await ensureStreams(nc);
  const blobs = await openBlobStore(c.blobs, nc);
  const connection = await NativeConnection.connect({ address: c.temporal.address });
  const client = new Client({ connection, namespace: c.temporal.namespace });
  const queue = hostTaskQueue(c.temporal.taskQueue, host);
  // KV checkpoints in host memory (checkpoint/): a retry on this host resumes from them.
  const ck = checkpointConfig(c.dataDir);
  const checkpoints = ck.enabled
    ? {
        store: new CheckpointStore({
          dir: ck.dir,
          spillDir: ck.spillDir,
          memoryCapBytes: ck.memoryCapBytes,
          spillCapBytes: ck.spillCapBytes,
        }),
        everyTokens: ck.everyTokens,
        everyMs: ck.everyMs,
        // Copies in the NATS Object Store, so another host can resume (off by default).
        mirror: ck.natsBucket ? await CheckpointMirror.open(nc, ck.natsBucket) : undefined,
      }
    : undefined;
  const activities = createActivities({
    engine,
    blobs,
    events: new JobEvents(nc),
    client,
    host,
    hostTaskQueue: queue,
    device,
    progressIntervalMs: c.progressIntervalMs,
    hostWaitMs: c.resume.hostWaitMs,
    heartbeatMaxTokens: c.resume.heartbeatMaxTokens,
    checkpoints,
  });
  const common = {
    connection,
    namespace: c.temporal.namespace,
    activities,
    maxConcurrentActivityTaskExecutions: c.engine.maxBatch,
    // Heartbeats (and so cancellation) reach the server within a second.
    maxHeartbeatThrottleInterval: '1s',
    defaultHeartbeatThrottleInterval: '1s',
    shutdownGraceTime: `${o.shutdownGraceS ?? 30}s`,
  } as const;
  const main = await Worker.create({
    ...common,
    taskQueue: c.temporal.taskQueue,
    workflowBundle: await workflowBundle(),
  });
  const routed = await Worker.create({ ...common, taskQueue: queue });

  const stats = setInterval(() => {
    try {
      const s = engine.stats();
      nc.publish(
        workerStatsSubject(host),
        JSON.stringify({ ...s, host, maxBatch: c.engine.maxBatch, at: Date.now() }),
      );
    } catch {
      // The engine is closing; the next tick (if any) reports again.
    }
  }, STATS_EVERY_MS);

  const done = (async () => {
    try {
      await Promise.all([main.run(), routed.run()]);
    } finally {
      clearInterval(stats);
      if (ownEngine) await engine.close();
      // Copies already queued still reach the object store.
      await checkpoints?.mirror?.idle();
      await nc.drain().catch(() => {});
      await connection.close().catch(() => {});
      await blobs.close();
    }
  })();

  const stop = async () => {
    // Preemption notice (SIGTERM): checkpoint every in-flight request first, so
    // whatever the grace time does not finish resumes from here.
    if (checkpoints) await engine.checkpointInFlight?.(5_000).catch(() => []);
    for (const w of [main, routed]) if (w.getState() === 'RUNNING') w.shutdown();
    await done;
  };
  return { host, taskQueue: c.temporal.taskQueue, hostTaskQueue: queue, engine, done, stop };
}
