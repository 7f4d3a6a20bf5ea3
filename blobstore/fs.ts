// Blob store on the local filesystem (the default): <dir>/<aa>/<hex>. Writes go
// to a temporary file and are renamed into place, so readers never see a part.
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BlobNotFoundError, type BlobStore, bytesOf, hexOf, refOf, verify } from './store';

export class FsBlobStore implements BlobStore {
  constructor(private readonly dir: string) {}

  private pathOf(ref: string): string {
    const hex = hexOf(ref);
    return path.join(this.dir, hex.slice(0, 2), hex);
  }

  async put(data: Uint8Array | string): Promise<string> {
    const bytes = bytesOf(data);
    const ref = refOf(bytes);
    const file = this.pathOf(ref);
    if (await this.has(ref)) return ref;
    await mkdir(path.dirname(file), { recursive: true });
    const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
    await writeFile(tmp, bytes);
    await rename(tmp, file);
    return ref;
  }

  async get(ref: string): Promise<Uint8Array> {
    try {
      return verify(ref, await readFile(this.pathOf(ref)));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new BlobNotFoundError(`blob ${ref} not found in ${this.dir}`);
      }
      throw err;
    }
  }

  async has(ref: string): Promise<boolean> {
    try {
      await stat(this.pathOf(ref));
      return true;
    } catch {
      return false;
    }
  }

  async close(): Promise<void> {}
}
