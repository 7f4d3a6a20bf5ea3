// Incremental detokenization for streaming. A token may end in the middle of
// a UTF-8 character (byte-level BPE, byte fallback), and decoding a lone
// suffix can lose a leading space, so each step decodes a small window that
// starts a few tokens back and only emits text once it no longer ends in
// U+FFFD (an incomplete character). The same idea as vLLM's and TGI's.
export type Decode = (tokens: number[]) => string;

export class StreamDecoder {
  private readonly tokens: number[] = [];
  /** Start of the window decoded as context. */
  private prefixOffset = 0;
  /** Tokens before this have had their text emitted. */
  private readOffset = 0;

  constructor(private readonly decode: Decode) {}

  /** Adds a token; returns the newly completed text ('' mid-character). */
  push(token: number): string {
    this.tokens.push(token);
    const prefix = this.decode(this.tokens.slice(this.prefixOffset, this.readOffset));
    const full = this.decode(this.tokens.slice(this.prefixOffset));
    if (full.length > prefix.length && !full.endsWith('\uFFFD')) {
      this.prefixOffset = this.readOffset;
      this.readOffset = this.tokens.length;
      return full.slice(prefix.length);
    }
    return '';
  }
}
