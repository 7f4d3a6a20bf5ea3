// What the activities need, handed in by the worker (the Temporal samples'
// factory shape): tests build the same activities over a real engine and stores.
import type { Client } from '@temporalio/client';
import type { BlobStore } from '../blobstore/store';
import type { CheckpointDeps } from '../checkpoint/resume';
import type { Engine } from '../engine/types';
import type { JobEvents } from '../nats/events';

export interface ActivityDeps {
  engine: Engine;
  blobs: BlobStore;
  events: JobEvents;
  /** Signals progress back to the job workflow for its progress query. */
  client: Client;
  host: string;
  /** The host's own task queue (see worker/): where a resumed step can be routed. */
  hostTaskQueue: string;
  device: string;
  /** How often progress (and streamed text) goes out on NATS. */
  progressIntervalMs: number;
  /** How long a retry should wait for this host to take it back (heartbeat `hostWaitMs`). */
  hostWaitMs?: number;
  /** Generated tokens carried in heartbeats at most (default: all). */
  heartbeatMaxTokens?: number;
  /** KV checkpoints in the host store, and their cadence (checkpoint/); absent: none. */
  checkpoints?: CheckpointDeps;
}
