// How a generate activity attempt uses checkpoints: where this attempt writes
// them, and, on a retry, whether it continues from the previous attempt's
// checkpoint or recomputes. The heartbeat carries only the checkpoint's id
// and counts; the KV stays in the host store.
//
// A missing, stale or corrupt checkpoint is never an error: the attempt
// re-prefills the stored document and generates again (the same tokens, the
// engine being deterministic for a given seed), logs why and counts it.
import type { CheckpointEvent, Engine, GenerateRequest } from '../engine/types';
import type { CheckpointStore } from './store';

export interface CheckpointDeps {
  store: CheckpointStore;
  everyTokens: number;
  everyMs: number;
}

/** The part of an earlier attempt's heartbeat a resume reads. */
export interface PriorAttempt {
  tokensDone: number;
  resumes: number;
  checkpointId?: string;
}

export interface ResumePlan {
  resumes: number;
  resumedFrom?: 'checkpoint' | 'recompute';
  tokensRecomputed: number;
}

/** Why resumes did not use a checkpoint, per process (the worker reports them). */
export const resumeCounters = {
  fromCheckpoint: 0,
  recomputed: 0,
  missing: 0,
  rejected: 0,
};

export interface Resume {
  id: string;
  plan: ResumePlan;
  /** The chat-templated prompt of the instruction. */
  prompt: number[];
  /** Tokens earlier attempts generated that this one continues after. */
  generated: number[];
  /** Engine request fields: the prompt (with `generated`), the remaining budget, checkpoints. */
  request(
    maxTokens: number,
    onCheckpoint: (e: CheckpointEvent) => void,
  ): Pick<GenerateRequest, 'tokens' | 'maxTokens' | 'checkpoint'>;
}

export interface ResumeLog {
  info(message: string, meta?: Record<string, unknown>): void;
  warn(message: string, meta?: Record<string, unknown>): void;
}

export function planCheckpointResume(
  deps: CheckpointDeps,
  engine: Engine,
  id: string,
  prompt: number[],
  maxTokens: number,
  prior: PriorAttempt | undefined,
  log: ResumeLog,
): Resume {
  let generated: number[] = [];
  let plan: ResumePlan = { resumes: 0, tokensRecomputed: 0 };
  if (prior) {
    const found = fromCheckpoint(deps.store, engine, prior.checkpointId ?? id, prompt, maxTokens);
    if ('generated' in found) {
      generated = found.generated;
      resumeCounters.fromCheckpoint++;
      plan = {
        resumes: prior.resumes + 1,
        resumedFrom: 'checkpoint',
        tokensRecomputed: Math.max(0, prior.tokensDone - generated.length),
      };
      log.info('resuming from checkpoint', { id, generated: generated.length });
    } else {
      resumeCounters.recomputed++;
      if (found.missing) resumeCounters.missing++;
      else resumeCounters.rejected++;
      plan = {
        resumes: prior.resumes + 1,
        resumedFrom: 'recompute',
        tokensRecomputed: prior.tokensDone,
      };
      log.warn('checkpoint not used, recomputing', { id, reason: found.reason });
    }
  }
  const path = deps.store.pathFor(id);
  return {
    id,
    plan,
    prompt,
    generated,
    request: (max, onCheckpoint) => ({
      tokens: [...prompt, ...generated],
      maxTokens: max - generated.length,
      checkpoint: {
        path,
        everyTokens: deps.everyTokens,
        everyMs: deps.everyMs,
        restore: generated.length > 0,
        resumedGenerated: generated.length,
        onCheckpoint,
      },
    }),
  };
}

type Found = { generated: number[] } | { missing: boolean; reason: string };

function fromCheckpoint(
  store: CheckpointStore,
  engine: Engine,
  id: string,
  prompt: number[],
  maxTokens: number,
): Found {
  const file = store.locate(id);
  if (!file) return { missing: true, reason: `no checkpoint ${id} on this host` };
  if (!engine.inspectCheckpoint) return { missing: true, reason: 'engine cannot read checkpoints' };
  let found: ReturnType<NonNullable<Engine['inspectCheckpoint']>>;
  try {
    found = engine.inspectCheckpoint(file);
  } catch (err) {
    return { missing: false, reason: (err as Error).message };
  }
  if (!found.ok) return { missing: false, reason: found.reason };
  const tokens = Array.from(found.tokens);
  if (tokens.length <= prompt.length || prompt.some((t, i) => tokens[i] !== t)) {
    return { missing: false, reason: 'checkpoint belongs to another prompt (stale)' };
  }
  const generated = tokens.slice(prompt.length);
  if (generated.length >= maxTokens) {
    return { missing: false, reason: 'checkpoint is past the token budget' };
  }
  return { generated };
}
