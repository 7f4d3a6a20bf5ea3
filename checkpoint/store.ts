// The host-memory checkpoint store: one file per running request, in a tmpfs
// directory (/dev/shm) so it outlives the worker process but not the host.
// The engine writes and appends the files itself (native/src/checkpoint) and
// maps them to restore; this class only names them, keeps the memory tier
// under its cap by moving the least recently used files to a disk directory,
// and brings a spilled file back when a resume needs it.
//
// Files of running requests are pinned (acquire/release): the engine appends
// to them in place, so they are never moved while in use.
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  renameSync,
  statSync,
  unlinkSync,
  utimesSync,
} from 'node:fs';
import path from 'node:path';

export interface CheckpointStoreOptions {
  /** Memory tier: a tmpfs directory such as /dev/shm/specontext-<uid>-<stack>. */
  dir: string;
  /** Disk tier for evicted files; undefined: evicted files are deleted. */
  spillDir?: string;
  memoryCapBytes: number;
  spillCapBytes: number;
}

export interface CheckpointUsage {
  memoryBytes: number;
  memoryFiles: number;
  spillBytes: number;
  spillFiles: number;
  spilled: number;
  evicted: number;
}

const SUFFIX = '.spxckpt';

interface Entry {
  id: string;
  file: string;
  bytes: number;
  usedAt: number;
}

export class CheckpointStore {
  private readonly pinned = new Map<string, number>();
  private spilled = 0;
  private evicted = 0;

  constructor(private readonly o: CheckpointStoreOptions) {
    mkdirSync(o.dir, { recursive: true, mode: 0o700 });
    if (o.spillDir) mkdirSync(o.spillDir, { recursive: true, mode: 0o700 });
  }

  /** A file-name-safe id for one generation of a job. */
  static idFor(jobId: string, index: number): string {
    return `${jobId.replace(/[^A-Za-z0-9_-]/g, '_')}-${index}`;
  }

  /** Where the engine writes id's checkpoint. */
  pathFor(id: string): string {
    return path.join(this.o.dir, `${id}${SUFFIX}`);
  }

  /**
   * The memory-tier path of a stored checkpoint (moved back from disk if it was
   * spilled), marked as just used; undefined when neither tier has it.
   */
  locate(id: string): string | undefined {
    const mem = this.pathFor(id);
    if (!existsSync(mem) && this.o.spillDir) {
      const spill = path.join(this.o.spillDir, `${id}${SUFFIX}`);
      if (existsSync(spill)) moveFile(spill, mem);
    }
    if (!existsSync(mem)) return undefined;
    const now = new Date();
    utimesSync(mem, now, now);
    return mem;
  }

  /** Pins id's file while its request runs. */
  acquire(id: string): void {
    this.pinned.set(id, (this.pinned.get(id) ?? 0) + 1);
  }

  release(id: string): void {
    const n = (this.pinned.get(id) ?? 0) - 1;
    if (n > 0) this.pinned.set(id, n);
    else this.pinned.delete(id);
  }

  /** Forgets id's checkpoint in both tiers (its job no longer needs it). */
  remove(id: string): void {
    for (const dir of [this.o.dir, this.o.spillDir]) {
      if (!dir) continue;
      try {
        unlinkSync(path.join(dir, `${id}${SUFFIX}`));
      } catch {
        // absent
      }
    }
  }

  /**
   * Keeps each tier under its cap, least recently used first: memory files go
   * to the spill directory, spilled files are deleted. Pinned files stay.
   */
  enforce(): void {
    const mem = this.entries(this.o.dir);
    let memBytes = sum(mem);
    for (const e of mem) {
      if (memBytes <= this.o.memoryCapBytes) break;
      if (this.pinned.has(e.id)) continue;
      if (this.o.spillDir) {
        moveFile(e.file, path.join(this.o.spillDir, path.basename(e.file)));
        this.spilled++;
      } else {
        unlinkSync(e.file);
        this.evicted++;
      }
      memBytes -= e.bytes;
    }
    if (!this.o.spillDir) return;
    const disk = this.entries(this.o.spillDir);
    let diskBytes = sum(disk);
    for (const e of disk) {
      if (diskBytes <= this.o.spillCapBytes) break;
      unlinkSync(e.file);
      this.evicted++;
      diskBytes -= e.bytes;
    }
  }

  usage(): CheckpointUsage {
    const mem = this.entries(this.o.dir);
    const disk = this.o.spillDir ? this.entries(this.o.spillDir) : [];
    return {
      memoryBytes: sum(mem),
      memoryFiles: mem.length,
      spillBytes: sum(disk),
      spillFiles: disk.length,
      spilled: this.spilled,
      evicted: this.evicted,
    };
  }

  /** Checkpoint files of one tier, least recently used first. */
  private entries(dir: string): Entry[] {
    const out: Entry[] = [];
    for (const name of readdirSync(dir)) {
      if (!name.endsWith(SUFFIX)) continue;
      const file = path.join(dir, name);
      try {
        const st = statSync(file);
        out.push({
          id: name.slice(0, -SUFFIX.length),
          file,
          bytes: st.size,
          usedAt: st.mtimeMs,
        });
      } catch {
        // removed meanwhile
      }
    }
    return out.sort((a, b) => a.usedAt - b.usedAt);
  }
}

function sum(entries: Entry[]): number {
  return entries.reduce((n, e) => n + e.bytes, 0);
}

/** rename() cannot cross file systems (tmpfs -> disk): copy, then unlink. */
function moveFile(from: string, to: string): void {
  try {
    renameSync(from, to);
  } catch {
    copyFileSync(from, to);
    unlinkSync(from);
  }
}
