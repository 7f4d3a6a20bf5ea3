// The content-addressed blob store, both kinds: the local filesystem and the
// NATS JetStream Object Store of the test stack (a real nats-server).
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { NatsConnection } from '@nats-io/nats-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BlobCorruptError,
  BlobNotFoundError,
  type BlobStore,
  FsBlobStore,
  getJson,
  NatsBlobStore,
  putJson,
  refOf,
} from '../blobstore';
import { connectNats } from '../nats/connection';
import { testServiceConfig } from './service-helpers';

const dir = mkdtempSync(path.join(tmpdir(), 'blobs-'));
let nc: NatsConnection;
const stores: Record<string, () => Promise<BlobStore>> = {
  fs: async () => new FsBlobStore(dir),
  nats: async () => NatsBlobStore.open(nc, `test-blobs-${process.pid}`),
};

beforeAll(async () => {
  nc = await connectNats(testServiceConfig('blob').nats.url, 'blob-test');
});
afterAll(async () => {
  await nc?.drain();
  rmSync(dir, { recursive: true, force: true });
});

describe.each(Object.keys(stores))('%s blob store', (kind) => {
  it('stores by sha256, once, and reads back the same bytes', async () => {
    const store = await (stores[kind] as () => Promise<BlobStore>)();
    const text = `Call me Ishmael. ${kind} ${'é'.repeat(3)}`;
    const ref = await store.put(text);
    expect(ref).toBe(refOf(Buffer.from(text, 'utf8')));
    expect(ref).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(await store.put(text)).toBe(ref);
    expect(Buffer.from(await store.get(ref)).toString('utf8')).toBe(text);
    expect(await store.has(ref)).toBe(true);

    const big = new Uint8Array(3 * 1024 * 1024).map((_, i) => (i * 31) & 0xff); // over one NATS chunk
    const bigRef = await store.put(big);
    expect(Buffer.compare(Buffer.from(await store.get(bigRef)), Buffer.from(big))).toBe(0);

    const jsonRef = await putJson(store, { a: [1, 2] });
    expect(await getJson(store, jsonRef)).toEqual({ a: [1, 2] });

    const missing = refOf(Buffer.from('never stored'));
    expect(await store.has(missing)).toBe(false);
    await expect(store.get(missing)).rejects.toBeInstanceOf(BlobNotFoundError);
    await expect(store.get('sha256:xyz')).rejects.toThrow(/not a blob reference/);
  });
});

it('fs store detects a blob whose bytes no longer match its ref', async () => {
  const store = new FsBlobStore(dir);
  const ref = await store.put('original');
  const hex = ref.slice('sha256:'.length);
  const file = path.join(dir, hex.slice(0, 2), hex);
  writeFileSync(file, 'tampered');
  await expect(store.get(ref)).rejects.toBeInstanceOf(BlobCorruptError);
  expect(readdirSync(path.dirname(file)).some((f) => f.endsWith('.tmp'))).toBe(false);
});
