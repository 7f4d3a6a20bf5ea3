// How a generate activity attempt continues from the previous one: where this
// attempt writes checkpoints, and, on a retry, whether it restores the previous
// attempt's checkpoint or recomputes. The heartbeat carries only the
// checkpoint's id, counts and the generated token ids; the KV stays in the host
// store (and, optionally, its copy in the NATS Object Store: mirror.ts).
//
// A missing, stale or corrupt checkpoint is never an error: the attempt
// re-prefills the stored document followed by the tokens the heartbeat
// carried, and continues from there (the sampler skips ahead by as many draws,
// so seeded sampling continues too); it logs why and counts it.
import type { CheckpointEvent, Engine, GenerateRequest } from '../engine/types';
import type { CheckpointMirror } from './mirror';
import type { CheckpointStore } from './store';

export interface CheckpointDeps {
  store: CheckpointStore;
  everyTokens: number;
  everyMs: number;
  /** Copies in the NATS Object Store; absent: checkpoints stay on this host. */
  mirror?: CheckpointMirror;
}

/** The part of an earlier attempt's heartbeat a resume reads. */
export interface PriorAttempt {
  tokensDone: number;
  resumes: number;
  checkpointId?: string;
  /** Tokens it generated (decoded from the heartbeat; may be fewer than tokensDone). */
  tokens?: number[];
}

export interface ResumePlan {
  resumes: number;
  resumedFrom?: 'checkpoint' | 'recompute';
  tokensRecomputed: number;
  /** Of the recomputed tokens, those re-prefilled (from the heartbeat) rather than decoded again. */
  tokensReprefilled?: number;
}

/** How resumes went, per process (the worker reports them). */
export const resumeCounters = {
  fromCheckpoint: 0,
  /** Of which the file came from the NATS Object Store. */
  fromRemote: 0,
  recomputed: 0,
  missing: 0,
  rejected: 0,
  /** Generated tokens re-prefilled rather than generated again. */
  reprefilled: 0,
};

export interface Resume {
  id: string;
  plan: ResumePlan;
  /** The chat-templated prompt of the instruction. */
  prompt: number[];
  /** Tokens earlier attempts generated that this one continues after. */
  generated: number[];
  /** Whether the engine restores the KV of `prompt + generated` from the checkpoint. */
  restore: boolean;
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

/**
 * The generated tokens a recompute re-prefills: those of the heartbeat, less
 * the last one (generated again, so a stop token that ended the earlier
 * attempt just before it died ends this one too), within the token budget.
 */
export function reprefillable(tokens: number[] | undefined, maxTokens: number): number[] {
  if (!tokens?.length) return [];
  return tokens.slice(0, Math.max(0, Math.min(tokens.length - 1, maxTokens - 1)));
}

/**
 * How an attempt of generation `id` (with chat-templated `prompt`) runs, after
 * `prior` (the previous attempt's last heartbeat; undefined on a first attempt).
 * With `deps`, the attempt writes checkpoints and may restore one.
 * `reprefill` false: without a usable checkpoint, the attempt generates again
 * from the prompt instead of re-prefilling the tokens so far. For sparse
 * attention (budget > 0): a dense re-prefill of tokens that were decoded
 * sparsely would not give the same KV, so the answer could change. (Its
 * checkpoints hold the retrieval head's state and restore exactly.)
 */
export async function planResume(
  deps: CheckpointDeps | undefined,
  engine: Engine,
  id: string,
  prompt: number[],
  maxTokens: number,
  prior: PriorAttempt | undefined,
  log: ResumeLog,
  reprefill = true,
): Promise<Resume> {
  let generated: number[] = [];
  let restore = false;
  let plan: ResumePlan = { resumes: 0, tokensRecomputed: 0 };
  if (prior) {
    const found = deps
      ? await fromCheckpoint(deps, engine, prior.checkpointId ?? id, prompt, maxTokens)
      : { missing: true, reason: 'checkpoints are off' };
    if ('generated' in found) {
      generated = found.generated;
      restore = true;
      resumeCounters.fromCheckpoint++;
      if (found.remote) resumeCounters.fromRemote++;
      plan = {
        resumes: prior.resumes + 1,
        resumedFrom: 'checkpoint',
        tokensRecomputed: Math.max(0, prior.tokensDone - generated.length),
      };
      log.info('resuming from checkpoint', {
        id,
        generated: generated.length,
        remote: found.remote,
      });
    } else {
      generated = reprefill ? reprefillable(prior.tokens, maxTokens) : [];
      resumeCounters.recomputed++;
      resumeCounters.reprefilled += generated.length;
      if (found.missing) resumeCounters.missing++;
      else resumeCounters.rejected++;
      plan = {
        resumes: prior.resumes + 1,
        resumedFrom: 'recompute',
        tokensRecomputed: prior.tokensDone,
        tokensReprefilled: generated.length,
      };
      log.warn('checkpoint not used, recomputing', {
        id,
        reason: found.reason,
        reprefilled: generated.length,
      });
    }
  }
  return {
    id,
    plan,
    prompt,
    generated,
    restore,
    request: (max, onCheckpoint) => {
      const rest = { tokens: [...prompt, ...generated], maxTokens: max - generated.length };
      if (!deps) {
        // No checkpoint file, but the engine still needs to know which prompt
        // tokens were sampled, to skip its sampler ahead.
        return generated.length
          ? { ...rest, checkpoint: { path: '', resumedGenerated: generated.length } }
          : rest;
      }
      return {
        ...rest,
        checkpoint: {
          path: deps.store.pathFor(id),
          everyTokens: deps.everyTokens,
          everyMs: deps.everyMs,
          restore,
          resumedGenerated: generated.length,
          onCheckpoint,
        },
      };
    },
  };
}

type Found = { generated: number[]; remote: boolean } | { missing: boolean; reason: string };

async function fromCheckpoint(
  deps: CheckpointDeps,
  engine: Engine,
  id: string,
  prompt: number[],
  maxTokens: number,
): Promise<Found> {
  const { store, mirror } = deps;
  let file = store.locate(id);
  let remote = false;
  if (!file && mirror && (await mirror.fetch(id, store.pathFor(id)))) {
    file = store.locate(id);
    remote = true;
  }
  if (!file) {
    const where = mirror ? 'on this host or in the object store' : 'on this host';
    return { missing: true, reason: `no checkpoint ${id} ${where}` };
  }
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
  return { generated, remote };
}
