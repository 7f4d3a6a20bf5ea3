// The local stack against real servers: an isolated Temporal dev server and
// NATS with JetStream on free ports, reached by the real clients, restarted
// to show their state persists, and stopped with nothing left behind.
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { Connection } from '@temporalio/client';
import { msToTs } from '@temporalio/common/lib/time';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { main } from '../cli/main';
import { ConfigError } from '../config/env';
import { type StackConfig, stackConfig } from '../config/stack';
import { freePort, portIsFree } from '../infra/port';
import { isOurs, pidFile } from '../infra/process';
import { stackDown, stackServers, stackStatus, stackUp } from '../infra/stack';
import {
  type IsolatedStack,
  isolatedStackEnv,
  startIsolatedStack,
  sweepDeadTestStacks,
  testDataRoot,
} from './helpers/stack';

async function listNamespaces(c: StackConfig): Promise<string[]> {
  const conn = await Connection.connect({ address: c.temporal.address });
  try {
    const res = await conn.workflowService.listNamespaces({ pageSize: 100 });
    return res.namespaces.map((n) => n.namespaceInfo?.name ?? '');
  } finally {
    await conn.close();
  }
}

async function allPortsFree(c: StackConfig): Promise<boolean> {
  const ports = [c.temporal.port, c.temporal.uiPort, c.nats.port, c.nats.monitorPort];
  const free = await Promise.all(ports.map((p) => portIsFree(p, c.host)));
  return free.every(Boolean);
}

describe('isolated stack', () => {
  let stack: IsolatedStack;
  let pids: number[];

  beforeAll(async () => {
    stack = await startIsolatedStack('stack-test');
    pids = (await stackStatus(stack.config)).map((r) => r.pid as number);
  });
  afterAll(async () => {
    await stack?.stop();
  });

  it('reports both servers healthy with a pid each', async () => {
    const rows = await stackStatus(stack.config);
    expect(rows.map((r) => [r.name, r.healthy])).toEqual([
      ['temporal', true],
      ['nats', true],
    ]);
    for (const pid of pids) expect(pid).toBeGreaterThan(0);
  });

  it('answers a Temporal client: lists namespaces and registers one', async () => {
    expect(await listNamespaces(stack.config)).toContain('default');
    const conn = await Connection.connect({ address: stack.config.temporal.address });
    try {
      await conn.workflowService.registerNamespace({
        namespace: 'stack-test-persisted',
        workflowExecutionRetentionPeriod: msToTs('1 day'),
      });
    } finally {
      await conn.close();
    }
    expect(await listNamespaces(stack.config)).toContain('stack-test-persisted');
  });

  it('publishes to a JetStream stream and reads the message back', async () => {
    const nc = await connect({ servers: stack.config.nats.url });
    try {
      const jsm = await jetstreamManager(nc);
      await jsm.streams.add({ name: 'STACKTEST', subjects: ['stacktest.>'] });
      const payload = `hello ${Date.now()}`;
      const ack = await jetstream(nc).publish('stacktest.hello', payload);
      expect(ack.stream).toBe('STACKTEST');
      const consumer = await jetstream(nc).consumers.get('STACKTEST');
      const msg = await consumer.next({ expires: 5_000 });
      expect(msg?.subject).toBe('stacktest.hello');
      expect(msg?.string()).toBe(payload);
      expect(msg?.seq).toBe(ack.seq);
    } finally {
      await nc.close();
    }
  });

  it('treats a second `up` as a no-op', async () => {
    const rows = await stackUp(stack.config);
    expect(rows.map((r) => r.pid)).toEqual(pids);
  });

  it('keeps Temporal and JetStream state across a restart', async () => {
    await stackDown(stack.config);
    await stackUp(stack.config);
    pids = (await stackStatus(stack.config)).map((r) => r.pid as number);
    expect(await listNamespaces(stack.config)).toContain('stack-test-persisted');
    const nc = await connect({ servers: stack.config.nats.url });
    try {
      const info = await (await jetstreamManager(nc)).streams.info('STACKTEST');
      expect(info.state.messages).toBe(1);
    } finally {
      await nc.close();
    }
  });

  it('stops cleanly: no process, no pid file, ports free', async () => {
    const stopped = await stackDown(stack.config);
    expect(stopped.sort()).toEqual(['nats', 'temporal']);
    const servers = stackServers(stack.config);
    for (const [i, s] of servers.entries()) {
      expect(isOurs(pids[i] as number, s.bin)).toBe(false);
      expect(existsSync(pidFile(s))).toBe(false);
    }
    expect(await allPortsFree(stack.config)).toBe(true);
    expect(await stackDown(stack.config)).toEqual([]);
  });
});

describe('test stacks left by a run that died', () => {
  it('are stopped and removed by the next run', async () => {
    // A pid that certainly belonged to a process that has exited.
    const gone = spawn(process.execPath, ['-e', '0']);
    await once(gone, 'exit');
    const env = await isolatedStackEnv('orphan');
    env.SPECONTEXT_DATA_DIR = path.join(testDataRoot, `orphan-${gone.pid}`);
    const c = stackConfig({ ...process.env, ...env });
    await stackUp(c);
    const pids = (await stackStatus(c)).map((r) => r.pid as number);
    expect(await sweepDeadTestStacks()).toContain(`orphan-${gone.pid}`);
    for (const [i, s] of stackServers(c).entries())
      expect(isOurs(pids[i] as number, s.bin)).toBe(false);
    expect(existsSync(c.dataDir)).toBe(false);
    expect(await allPortsFree(c)).toBe(true);
  });
});

describe('stack errors', () => {
  let squatter: ChildProcess | undefined;
  afterAll(() => {
    squatter?.kill('SIGKILL');
  });

  it('names the port and its variable when another process holds it', async () => {
    const env = await isolatedStackEnv('port-taken');
    const port = await freePort();
    // A different program listening on the port NATS wants.
    squatter = spawn(process.execPath, [
      '-e',
      `require('node:net').createServer().listen(${port}, '127.0.0.1', () => console.log('ready'))`,
    ]);
    await once(squatter.stdout as NodeJS.ReadableStream, 'data');
    const c = stackConfig({ ...env, SPECONTEXT_NATS_PORT: String(port) });
    await expect(stackUp(c)).rejects.toThrow(
      new RegExp(`port ${port} \\(SPECONTEXT_NATS_PORT\\).*already in use`),
    );
    // Nothing was started: the check runs before any server starts.
    for (const s of stackServers(c)) expect(existsSync(pidFile(s))).toBe(false);
    expect(await portIsFree(c.temporal.port, c.host)).toBe(true);
  });

  it('names the variable of a bad value', () => {
    expect(() => stackConfig({ SPECONTEXT_NATS_PORT: 'forty-two' })).toThrow(ConfigError);
    expect(() => stackConfig({ SPECONTEXT_NATS_PORT: 'forty-two' })).toThrow(
      /SPECONTEXT_NATS_PORT="forty-two"/,
    );
    expect(() => stackConfig({ SPECONTEXT_TEMPORAL_PORT: '70000' })).toThrow(
      /SPECONTEXT_TEMPORAL_PORT/,
    );
    expect(() => stackConfig({ SPECONTEXT_HOST: '0.0.0.0' })).toThrow(/SPECONTEXT_HOST/);
    expect(() => stackConfig({ SPECONTEXT_NATS_MONITOR_PORT: '7233' })).toThrow(
      /SPECONTEXT_NATS_MONITOR_PORT and SPECONTEXT_TEMPORAL_PORT are both 7233/,
    );
  });

  it('lets clients dial another Temporal and NATS while the stack still serves on loopback', () => {
    const c = stackConfig({
      SPECONTEXT_TEMPORAL_ADDRESS: 'temporal.internal:7233',
      SPECONTEXT_NATS_URL: 'nats://nats.internal:4222',
    });
    expect(c.temporal.address).toBe('temporal.internal:7233');
    expect(c.nats.url).toBe('nats://nats.internal:4222');
    expect(stackServers(c).map((s) => s.address)).toEqual([
      '127.0.0.1:7233 (ui http://127.0.0.1:8233)',
      'nats://127.0.0.1:4222 (monitor http://127.0.0.1:8222)',
    ]);
    expect(() => stackConfig({ SPECONTEXT_NATS_URL: 'http://x' })).toThrow(/SPECONTEXT_NATS_URL/);
  });

  it('makes the CLI print that error and exit non-zero', async () => {
    const saved = process.env.SPECONTEXT_TEMPORAL_UI_PORT;
    const write = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    process.env.SPECONTEXT_TEMPORAL_UI_PORT = 'abc';
    try {
      await main(['node', 'specontext', 'stack', 'status']);
      expect(String(write.mock.calls[0]?.[0])).toMatch(/SPECONTEXT_TEMPORAL_UI_PORT="abc"/);
      expect(process.exitCode).toBe(1);
    } finally {
      write.mockRestore();
      process.exitCode = 0;
      if (saved === undefined) delete process.env.SPECONTEXT_TEMPORAL_UI_PORT;
      else process.env.SPECONTEXT_TEMPORAL_UI_PORT = saved;
    }
  });
});
