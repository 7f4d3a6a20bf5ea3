// Blob store in a NATS JetStream Object Store bucket: the shared option, so
// workers on several hosts read what the API (or another worker) stored.
import type { NatsConnection } from '@nats-io/nats-core';
import { type ObjectStore, Objm } from '@nats-io/obj';
import { BlobNotFoundError, type BlobStore, bytesOf, hexOf, refOf, verify } from './store';

export class NatsBlobStore implements BlobStore {
  private constructor(private readonly bucket: ObjectStore) {}

  static async open(nc: NatsConnection, bucket: string): Promise<NatsBlobStore> {
    return new NatsBlobStore(await new Objm(nc).create(bucket));
  }

  async put(data: Uint8Array | string): Promise<string> {
    const bytes = bytesOf(data);
    const ref = refOf(bytes);
    if (!(await this.has(ref))) await this.bucket.putBlob({ name: hexOf(ref) }, bytes);
    return ref;
  }

  async get(ref: string): Promise<Uint8Array> {
    const data = await this.bucket.getBlob(hexOf(ref));
    if (!data) throw new BlobNotFoundError(`blob ${ref} not found in the object store`);
    return verify(ref, data);
  }

  async has(ref: string): Promise<boolean> {
    const info = await this.bucket.info(hexOf(ref));
    return info !== null && !info.deleted;
  }

  async close(): Promise<void> {}
}
