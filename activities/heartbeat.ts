// The generated tokens a heartbeat carries: base64 of little-endian int32s.
// Compact, and plain JSON for Temporal's payload converter. A retry that
// cannot restore a checkpoint re-prefills these instead of generating them.

/** At most `max` tokens (the first ones), encoded. */
export function encodeTokens(tokens: readonly number[], max: number): string {
  const n = Math.min(tokens.length, max);
  const buf = Buffer.alloc(n * 4);
  for (let i = 0; i < n; i++) buf.writeInt32LE(tokens[i] as number, i * 4);
  return buf.toString('base64');
}

/** The tokens of a heartbeat; empty when it carries none or they are malformed. */
export function decodeTokens(encoded: string | undefined): number[] {
  if (!encoded) return [];
  const buf = Buffer.from(encoded, 'base64');
  if (buf.length % 4 !== 0) return [];
  const out: number[] = new Array(buf.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = buf.readInt32LE(i * 4);
  return out;
}
