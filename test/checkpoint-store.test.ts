// The host-memory checkpoint store on real directories (tmpfs when the machine
// has /dev/shm): naming, LRU spill to disk under the memory cap, pinned files
// kept, spilled files brought back, the disk cap, and the configuration.
import { existsSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { checkpointConfig } from '../checkpoint/config';
import { CheckpointStore } from '../checkpoint/store';
import { ConfigError } from '../config/env';
import { serviceConfig } from '../config/service';

const base = existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
let root: string;
let disk: string;

beforeEach(() => {
  root = mkdtempSync(path.join(base, 'spx-ckpt-test-'));
  disk = mkdtempSync(path.join(os.tmpdir(), 'spx-ckpt-spill-'));
});
afterEach(() => {
  rmSync(root, { recursive: true, force: true });
  rmSync(disk, { recursive: true, force: true });
});

/** Writes a fake checkpoint of `kb` KiB used `ageS` seconds ago. */
function put(store: CheckpointStore, id: string, kb: number, ageS: number): string {
  const file = store.pathFor(id);
  writeFileSync(file, Buffer.alloc(kb * 1024, id.length));
  const t = new Date(Date.now() - ageS * 1000);
  utimesSync(file, t, t);
  return file;
}

describe('CheckpointStore', () => {
  it('names files safely per job and instruction', () => {
    const store = new CheckpointStore({ dir: root, memoryCapBytes: 1e9, spillCapBytes: 0 });
    expect(CheckpointStore.idFor('job/1 x', 2)).toBe('job_1_x-2');
    expect(path.dirname(store.pathFor('a-0'))).toBe(root);
    expect(store.locate('a-0')).toBeUndefined();
    put(store, 'a-0', 1, 0);
    expect(store.locate('a-0')).toBe(store.pathFor('a-0'));
  });

  it('spills the least recently used files to disk under the memory cap', () => {
    const store = new CheckpointStore({
      dir: root,
      spillDir: disk,
      memoryCapBytes: 250 * 1024,
      spillCapBytes: 1e9,
    });
    put(store, 'old-0', 100, 30);
    put(store, 'mid-0', 100, 20);
    put(store, 'new-0', 100, 10);
    store.enforce();
    expect(existsSync(store.pathFor('old-0'))).toBe(false);
    expect(existsSync(path.join(disk, 'old-0.spxckpt'))).toBe(true);
    expect(existsSync(store.pathFor('mid-0'))).toBe(true);
    const u = store.usage();
    expect(u.memoryBytes).toBe(200 * 1024);
    expect(u.spillFiles).toBe(1);
    expect(u.spilled).toBe(1);
    // A resume brings it back to memory, bytes intact, as the most recent.
    const back = store.locate('old-0');
    expect(back).toBe(store.pathFor('old-0'));
    expect(readFileSync(back as string).length).toBe(100 * 1024);
    expect(existsSync(path.join(disk, 'old-0.spxckpt'))).toBe(false);
    store.enforce();
    expect(existsSync(store.pathFor('old-0'))).toBe(true);
    expect(existsSync(store.pathFor('mid-0'))).toBe(false);
  });

  it('never moves a pinned (running) checkpoint', () => {
    const store = new CheckpointStore({
      dir: root,
      spillDir: disk,
      memoryCapBytes: 50 * 1024,
      spillCapBytes: 1e9,
    });
    put(store, 'busy-0', 100, 60);
    put(store, 'idle-0', 100, 1);
    store.acquire('busy-0');
    store.enforce();
    expect(existsSync(store.pathFor('busy-0'))).toBe(true);
    expect(existsSync(store.pathFor('idle-0'))).toBe(false);
    store.release('busy-0');
    store.enforce();
    expect(existsSync(store.pathFor('busy-0'))).toBe(false);
  });

  it('deletes the oldest spilled files over the disk cap, or at once without a disk tier', () => {
    const store = new CheckpointStore({
      dir: root,
      spillDir: disk,
      memoryCapBytes: 0,
      spillCapBytes: 150 * 1024,
    });
    put(store, 'a-0', 100, 30);
    put(store, 'b-0', 100, 20);
    store.enforce();
    expect(store.usage()).toMatchObject({ memoryFiles: 0, spillFiles: 1, evicted: 1 });
    expect(store.locate('a-0')).toBeUndefined();
    expect(store.locate('b-0')).toBe(store.pathFor('b-0'));

    const memOnly = new CheckpointStore({ dir: root, memoryCapBytes: 0, spillCapBytes: 0 });
    memOnly.enforce();
    expect(memOnly.usage()).toMatchObject({ memoryFiles: 0, evicted: 1 });
  });

  it('remove() forgets both tiers', () => {
    const store = new CheckpointStore({
      dir: root,
      spillDir: disk,
      memoryCapBytes: 0,
      spillCapBytes: 1e9,
    });
    put(store, 'x-0', 1, 5);
    store.enforce();
    store.remove('x-0');
    expect(store.locate('x-0')).toBeUndefined();
  });
});

describe('checkpointConfig', () => {
  it('defaults to a per-stack /dev/shm directory and a disk tier under the data dir', () => {
    const a = checkpointConfig('/data/a', {});
    const b = checkpointConfig('/data/b', {});
    expect(a.dir).not.toBe(b.dir);
    expect(a.spillDir).toBe(path.join('/data/a', 'checkpoints'));
    expect(a.everyTokens).toBe(64);
    expect(a.enabled).toBe(true);
  });

  it('names a bad variable', () => {
    expect(() => checkpointConfig('/d', { SPECONTEXT_CHECKPOINT_EVERY_TOKENS: 'soon' })).toThrow(
      ConfigError,
    );
    expect(() => checkpointConfig('/d', { SPECONTEXT_CHECKPOINT_EVERY_TOKENS: 'soon' })).toThrow(
      /SPECONTEXT_CHECKPOINT_EVERY_TOKENS/,
    );
  });

  it('copies to NATS only when asked, into the named bucket; the disk tier can move', () => {
    expect(checkpointConfig('/d', {}).natsBucket).toBeUndefined();
    const on = checkpointConfig('/d', {
      SPECONTEXT_CHECKPOINT_NATS: 'true',
      SPECONTEXT_CHECKPOINT_BUCKET: 'ckpts',
      SPECONTEXT_CHECKPOINT_SPILL_DIR: '/disk/ck',
    });
    expect(on.natsBucket).toBe('ckpts');
    expect(on.spillDir).toBe('/disk/ck');
    expect(checkpointConfig('/d', { SPECONTEXT_CHECKPOINT_NATS: '1' }).natsBucket).toBe(
      'specontext-checkpoints',
    );
    expect(() => checkpointConfig('/d', { SPECONTEXT_CHECKPOINT_NATS: 'maybe' })).toThrow(
      /SPECONTEXT_CHECKPOINT_NATS/,
    );
  });
});

describe('resume settings (serviceConfig)', () => {
  it('defaults: the machine hostname, a 30 s wait for the checkpoint host, 32768 tokens', () => {
    const c = serviceConfig({});
    expect(c.resume).toEqual({ host: undefined, hostWaitMs: 30_000, heartbeatMaxTokens: 32_768 });
    const r = serviceConfig({
      SPECONTEXT_WORKER_HOST: 'pod-7_a',
      SPECONTEXT_AFFINITY_WAIT_MS: '0',
      SPECONTEXT_HEARTBEAT_MAX_TOKENS: '100',
    }).resume;
    expect(r).toEqual({ host: 'pod-7_a', hostWaitMs: 0, heartbeatMaxTokens: 100 });
  });

  it('names a bad variable', () => {
    expect(() => serviceConfig({ SPECONTEXT_WORKER_HOST: 'a.b' })).toThrow(
      /SPECONTEXT_WORKER_HOST/,
    );
    expect(() => serviceConfig({ SPECONTEXT_AFFINITY_WAIT_MS: '-1' })).toThrow(
      /SPECONTEXT_AFFINITY_WAIT_MS/,
    );
    expect(() => serviceConfig({ SPECONTEXT_HEARTBEAT_MAX_TOKENS: 'all' })).toThrow(ConfigError);
  });
});
