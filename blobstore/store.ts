// Content-addressed blob store: documents, prepared prompts and results live
// here, and Temporal history carries only their references ("sha256:<hex>").
// put() of the same bytes twice gives the same ref and stores them once.
import { createHash } from 'node:crypto';

export interface BlobStore {
  put(data: Uint8Array | string): Promise<string>;
  /** Rejects with BlobNotFoundError if absent, BlobCorruptError if the bytes do not match. */
  get(ref: string): Promise<Uint8Array>;
  has(ref: string): Promise<boolean>;
  close(): Promise<void>;
}

export class BlobNotFoundError extends Error {
  override name = 'BlobNotFoundError';
}
export class BlobCorruptError extends Error {
  override name = 'BlobCorruptError';
}

const REF = /^sha256:([0-9a-f]{64})$/;

export function digestOf(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export function refOf(data: Uint8Array): string {
  return `sha256:${digestOf(data)}`;
}

/** The hex digest of a ref; throws on anything else (refs come from our own code). */
export function hexOf(ref: string): string {
  const m = REF.exec(ref);
  if (!m?.[1]) throw new Error(`not a blob reference: ${JSON.stringify(ref)}`);
  return m[1];
}

export function bytesOf(data: Uint8Array | string): Uint8Array {
  return typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
}

export function verify(ref: string, data: Uint8Array): Uint8Array {
  if (refOf(data) !== ref) throw new BlobCorruptError(`blob ${ref} does not match its content`);
  return data;
}

export async function putJson(store: BlobStore, value: unknown): Promise<string> {
  return store.put(JSON.stringify(value));
}

export async function getJson<T>(store: BlobStore, ref: string): Promise<T> {
  return JSON.parse(Buffer.from(await store.get(ref)).toString('utf8')) as T;
}

export async function getText(store: BlobStore, ref: string): Promise<string> {
  return Buffer.from(await store.get(ref)).toString('utf8');
}
