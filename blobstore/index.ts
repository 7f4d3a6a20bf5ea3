// Opens the configured blob store: the local filesystem by default, or the
// NATS Object Store (shared between hosts) when SPECONTEXT_BLOB_STORE=nats.
import type { NatsConnection } from '@nats-io/nats-core';
import type { ServiceConfig } from '../config/service';
import { FsBlobStore } from './fs';
import { NatsBlobStore } from './nats';
import type { BlobStore } from './store';

export * from './store';
export { FsBlobStore, NatsBlobStore };

export async function openBlobStore(
  c: ServiceConfig['blobs'],
  nc: NatsConnection,
): Promise<BlobStore> {
  return c.kind === 'nats' ? NatsBlobStore.open(nc, c.bucket) : new FsBlobStore(c.dir);
}
