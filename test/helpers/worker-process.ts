// Real workers in their own processes, for the preemption tests: compiled
// once from the sources (vitest runs TypeScript, a child process needs
// JavaScript), started with their own environment, SIGKILLed at will.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';

const ROOT = path.join(__dirname, '..', '..');
const BUILD = path.join(ROOT, 'native', 'build-ts-preemption');
const ENTRY = path.join(BUILD, 'test', 'helpers', 'checkpoint-worker.js');

/** Compiles the tree into BUILD (incrementally) so checkpoint-worker.js can run. */
export function compileWorkerEntry(): void {
  try {
    execFileSync(
      process.execPath,
      [
        require.resolve('typescript/bin/tsc'),
        '-p',
        ROOT,
        '--outDir',
        BUILD,
        '--incremental',
        '--tsBuildInfoFile',
        path.join(BUILD, '.tsbuildinfo'),
      ],
      { stdio: 'ignore' },
    );
  } catch {
    // Type errors elsewhere still emit; the worker entry must exist.
  }
  if (!existsSync(ENTRY)) throw new Error('could not compile the worker entry');
}

/** Starts a worker process with `env` on top of this one's, and waits until it polls. */
export async function startWorkerProcess(env: Record<string, string>): Promise<ChildProcess> {
  const child = spawn(process.execPath, [ENTRY], {
    env: {
      ...process.env,
      ...env,
      SPX_NATIVE_ADDON:
        process.env.SPX_NATIVE_ADDON ??
        path.join(ROOT, 'build', 'Release', 'specontext_native.node'),
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) resolve();
    });
    child.on('exit', (code) => reject(new Error(`worker exited with ${code}`)));
  });
  return child;
}

export const running = (child: ChildProcess | undefined): child is ChildProcess =>
  !!child && child.exitCode === null && child.signalCode === null;

export async function kill(child: ChildProcess): Promise<void> {
  if (!running(child)) return;
  const gone = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await gone;
}
