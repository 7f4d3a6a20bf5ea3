// Checkpoint settings (SPECONTEXT_CHECKPOINT_*), read with config/env.ts's
// section(). The memory tier defaults to a /dev/shm directory named after the
// user and the data dir, so isolated test stacks never share files.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { bool, int, section, str } from '../config/env';

export interface CheckpointConfig {
  enabled: boolean;
  everyTokens: number;
  everyMs: number;
  dir: string;
  spillDir: string;
  memoryCapBytes: number;
  spillCapBytes: number;
  /** Copy checkpoints to this NATS Object Store bucket (another host can resume); off if unset. */
  natsBucket?: string;
}

export function checkpointConfig(
  dataDir: string,
  env: NodeJS.ProcessEnv = process.env,
): CheckpointConfig {
  const c = section(
    {
      SPECONTEXT_CHECKPOINT: bool(true),
      SPECONTEXT_CHECKPOINT_EVERY_TOKENS: int(64),
      SPECONTEXT_CHECKPOINT_EVERY_MS: int(0),
      SPECONTEXT_CHECKPOINT_DIR: z.string().min(1).optional(),
      SPECONTEXT_CHECKPOINT_MEMORY_MB: int(4096, 1),
      SPECONTEXT_CHECKPOINT_SPILL_MB: int(16384, 0),
      SPECONTEXT_CHECKPOINT_SPILL_DIR: z.string().min(1).optional(),
      SPECONTEXT_CHECKPOINT_NATS: bool(false),
      SPECONTEXT_CHECKPOINT_BUCKET: str('specontext-checkpoints'),
    },
    env,
  );
  const stack = createHash('sha256').update(path.resolve(dataDir)).digest('hex').slice(0, 8);
  const uid = typeof process.getuid === 'function' ? process.getuid() : 0;
  const shm = existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  return {
    enabled: c.SPECONTEXT_CHECKPOINT,
    everyTokens: c.SPECONTEXT_CHECKPOINT_EVERY_TOKENS,
    everyMs: c.SPECONTEXT_CHECKPOINT_EVERY_MS,
    dir: c.SPECONTEXT_CHECKPOINT_DIR ?? path.join(shm, `specontext-${uid}-${stack}`),
    spillDir: c.SPECONTEXT_CHECKPOINT_SPILL_DIR ?? path.join(dataDir, 'checkpoints'),
    memoryCapBytes: c.SPECONTEXT_CHECKPOINT_MEMORY_MB * 1024 * 1024,
    spillCapBytes: c.SPECONTEXT_CHECKPOINT_SPILL_MB * 1024 * 1024,
    natsBucket: c.SPECONTEXT_CHECKPOINT_NATS ? c.SPECONTEXT_CHECKPOINT_BUCKET : undefined,
  };
}
