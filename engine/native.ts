// The whole native surface of specontext_native.node, declared once.
// Everything else reaches the addon through engine/index.ts; nothing outside
// engine/ imports this file.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { AddonMissingError } from './errors';
import type {
  CheckpointEvent,
  CheckpointInspection,
  EngineStats,
  GenerationStats,
  ModelInfo,
} from './types';

/** Opaque: only the addon can make or read one. */
export interface NativeHandle {
  readonly __brand: 'spx.EngineHandle';
}

export interface NativeOpenOptions {
  modelDir: string;
  device?: string;
  threads?: number;
  maxBatch?: number;
  maxContext?: number;
  prefillChunk?: number;
  dlmDir?: string;
  dlmLayers?: number;
  /** Fallback threshold; < 0 or absent: the head's recommendation, 0: never. */
  fallbackMass?: number;
}

export interface NativeRequest {
  prompt: number[] | Int32Array;
  maxNewTokens: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  stopTokenIds?: number[];
  budget?: number;
  checkpoint?: NativeCheckpointSpec;
}

/** GenerateRequest.checkpoint as the addon takes it (native/src/checkpoint). */
export interface NativeCheckpointSpec {
  path: string;
  everyTokens?: number;
  everyMs?: number;
  restore?: boolean;
  resumedGenerated?: number;
}

/** The engine's own shapes, as in engine/types.ts; finishReason may also be 'error'. */
export type NativeRequestStats = Omit<GenerationStats, 'finishReason'> & {
  finishReason: GenerationStats['finishReason'] | 'error';
};
export type NativeEngineStats = EngineStats;
export type NativeModelInfo = ModelInfo;

/** Called on the JS thread for every token, then once with 'done' or 'error'. */
export type NativeEventCallback = {
  (kind: 'token', token: number): void;
  (kind: 'done', stats: NativeRequestStats): void;
  (kind: 'error', error: Error): void;
  (kind: 'checkpoint', event: CheckpointEvent): void;
};

/** Errors thrown or rejected by the addon carry one of these codes. */
export type NativeErrorCode =
  | 'SPX_OPEN'
  | 'SPX_INVALID_REQUEST'
  | 'SPX_CLOSED'
  | 'SPX_GENERATION'
  | 'SPX_INTERNAL';

export interface NativeAddon {
  /** Loads the model on a worker thread. */
  open(options: NativeOpenOptions): Promise<NativeHandle>;
  /** Validates and enqueues; throws on a bad request; returns the request id. */
  submit(handle: NativeHandle, request: NativeRequest, onEvent: NativeEventCallback): number;
  /** No-op for unknown ids and closed engines. */
  cancel(handle: NativeHandle, id: number): void;
  /** Idempotent; resolves once the scheduler thread has stopped. */
  close(handle: NativeHandle): Promise<void>;
  stats(handle: NativeHandle): NativeEngineStats;
  info(handle: NativeHandle): NativeModelInfo;
  /** Compiled backends: 'cpu', plus 'cuda' when built with it. */
  backends(): string[];
  /** SpeContext memory planner (native/src/planner); throws SPX_INVALID_REQUEST on bad input. */
  plan(input: NativePlanInput): NativePlanResult;
  /** SpeContext fidelity evaluation (sparse vs full, teacher-forced); runs on a worker thread. */
  evalFidelity(input: NativeFidelityInput): Promise<NativeFidelityReport>;
  /** Checkpoint a running request at the next step boundary; its callback gets 'checkpoint'. */
  checkpointNow(handle: NativeHandle, id: number): void;
  /** Validates a checkpoint file against this engine; synchronous (reads the file). */
  inspectCheckpoint(handle: NativeHandle, path: string): CheckpointInspection;
}

export interface NativeFidelityInput {
  modelDir: string;
  device?: string;
  threads?: number;
  dlmDir?: string;
  dlmLayers?: number;
  oracleLayer?: number;
  /** Layers pooled for selection, the scoring layer and those below (0: recommended). */
  pool?: number;
  /** How query heads of a group (and pooled layers) combine: 'mean' (default) or the paper's 'max'. */
  reduce?: 'max' | 'mean';
  tokens: Int32Array;
  context: number;
  steps: number;
  budgets: number[];
  nSink?: number;
  nRecent?: number;
  fallbackMass?: number;
  /** Layers below it attend fully for every head (a control); default: the head's rule. */
  sparseFrom?: number;
}

export interface NativeBudgetFidelity {
  budget: number;
  fullAttention: boolean;
  recallMean: number;
  recallStd: number;
  recallMin: number;
  recallP10: number;
  top1Agreement: number;
  pplSparse: number;
  pplRatio: number;
  reloadFraction: number;
  fallbackRate: number;
  headMassMean: number;
  recallPerLayer: number[];
}

export interface NativeFidelityReport {
  head: string;
  scoringLayer: number;
  headParams: number;
  headSourceParams: number;
  targetParams: number;
  context: number;
  steps: number;
  pplFull: number;
  seconds: number;
  /** The fallback threshold the run used (0: none). */
  fallbackMass: number;
  budgets: NativeBudgetFidelity[];
}

/** Model shape and resources for the memory planner (paper Eq. 6-8). */
export interface NativePlanInput {
  layers: number;
  kvHeads: number;
  headDim: number;
  /** GQA group factor (the repeat_kv buffer); 0 when not materialised. */
  alpha: number;
  targetWeightBytes: number;
  dlmWeightBytes?: number;
  kvElemBytes?: number;
  requests: number;
  budget: number;
  gpuBytes: number;
  /** Measured runtime overhead; omitted: 30% of the weights. */
  measuredOverheadBytes?: number;
  /** Sequence lengths to place. */
  lengths?: number[];
}

export interface NativePlacement {
  length: number;
  hostLayers: number;
  fits: boolean;
  bytes: number;
  hostLayerIds: number[];
}

export interface NativePlanResult {
  fixedBytes: number;
  kvTokenBytes: number;
  /** thresholds[i] = S_i, the longest length that fits with i host layers (-1: none). */
  thresholds: number[];
  placements: NativePlacement[];
}

const ADDON_FILE = path.join('build', 'Release', 'specontext_native.node');

/** engine/ runs from the sources (tests) and from dist/engine (built): look upwards. */
function addonPath(): string {
  const override = process.env.SPX_NATIVE_ADDON;
  if (override) return override;
  const candidates = [
    path.resolve(__dirname, '..', ADDON_FILE),
    path.resolve(__dirname, '..', '..', ADDON_FILE),
  ];
  return candidates.find((p) => existsSync(p)) ?? (candidates[0] as string);
}

let addon: NativeAddon | undefined;

export function loadNative(): NativeAddon {
  if (addon) return addon;
  const file = addonPath();
  if (!existsSync(file)) {
    throw new AddonMissingError(
      `native addon not found at ${file}: run \`npm run build:native\` first`,
    );
  }
  try {
    addon = createRequire(__filename)(file) as NativeAddon;
  } catch (err) {
    throw new AddonMissingError(
      `native addon at ${file} failed to load (${(err as Error).message}): rebuild it with \`npm run build:native\``,
    );
  }
  return addon;
}
