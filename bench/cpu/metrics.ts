// One way to turn per-token timestamps into throughput, used for both engines
// so the comparison is like for like.
//
// prefill tok/s = all prompt tokens / time until every request has its first token
// decode tok/s  = tokens produced after that moment / the time they took
export interface RequestTiming {
  promptTokens: number;
  /** ms since the batch started, one per generated token. */
  times: number[];
}

export interface Throughput {
  prefillTokensPerS: number;
  decodeTokensPerS: number;
  prefillMs: number;
  decodeMs: number;
  generatedTokens: number;
}

export function throughput(runs: RequestTiming[]): Throughput {
  const firsts = runs.map((r) => r.times[0] ?? Number.NaN);
  const prefillEnd = Math.max(...firsts);
  const end = Math.max(...runs.map((r) => r.times[r.times.length - 1] ?? Number.NaN));
  const promptTokens = runs.reduce((a, r) => a + r.promptTokens, 0);
  const decodeTokens = runs.reduce((a, r) => a + r.times.filter((t) => t > prefillEnd).length, 0);
  const decodeMs = end - prefillEnd;
  return {
    prefillTokensPerS: (promptTokens / prefillEnd) * 1000,
    decodeTokensPerS: decodeMs > 0 ? (decodeTokens / decodeMs) * 1000 : Number.NaN,
    prefillMs: prefillEnd,
    decodeMs,
    generatedTokens: runs.reduce((a, r) => a + r.times.length, 0),
  };
}
