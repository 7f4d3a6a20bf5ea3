// Detached server processes tracked by pid files: start one, ask whether it is
// still ours and alive, stop it (SIGTERM, then SIGKILL after a timeout).
// Servers run in their own process group so that `down` from another shell,
// or after the starting process is gone, can stop them and anything they spawned.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export interface Tracked {
  /** Short name, also the stem of the pid and log files. */
  name: string;
  /** Executable path; its base name must appear in the process's command line. */
  bin: string;
  dir: string;
}

export const pidFile = (t: Tracked) => path.join(t.dir, `${t.name}.pid`);
export const logFile = (t: Tracked) => path.join(t.dir, `${t.name}.log`);

function readProc(pid: number, file: string): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/${file}`, 'utf8');
  } catch {
    return undefined;
  }
}

/** True while `pid` is a live (not zombie) process running `bin`. */
export function isOurs(pid: number, bin: string): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  const stat = readProc(pid, 'stat');
  if (stat === undefined) return true; // no procfs: trust kill(0)
  // The state letter follows the parenthesised command name.
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  if (state === 'Z' || state === 'X') return false;
  const cmd = readProc(pid, 'cmdline') ?? '';
  return cmd.split('\0')[0]?.endsWith(path.basename(bin)) ?? false;
}

/** The pid of a live process started for `t`, or undefined (a stale pid file is removed). */
export function runningPid(t: Tracked): number | undefined {
  const file = pidFile(t);
  if (!existsSync(file)) return undefined;
  const pid = Number.parseInt(readFileSync(file, 'utf8').trim(), 10);
  if (Number.isInteger(pid) && pid > 0 && isOurs(pid, t.bin)) return pid;
  rmSync(file, { force: true });
  return undefined;
}

/** Starts `t.bin args` detached, output appended to its log, and writes its pid file. */
export function startDetached(t: Tracked, args: string[]): number {
  const out = openSync(logFile(t), 'a');
  try {
    writeFileSync(out, `\n--- ${new Date().toISOString()} ${t.bin} ${args.join(' ')}\n`);
    const child = spawn(t.bin, args, { cwd: t.dir, detached: true, stdio: ['ignore', out, out] });
    if (child.pid === undefined) throw new Error(`could not start ${t.bin}`);
    child.on('error', () => {}); // reported through the health wait and the log
    child.unref();
    writeFileSync(pidFile(t), `${child.pid}\n`);
    return child.pid;
  } finally {
    closeSync(out);
  }
}

function signalGroup(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pid, sig);
  } catch {
    try {
      process.kill(pid, sig);
    } catch {
      // already gone
    }
  }
}

/**
 * Stops the process of `t` if it runs: SIGTERM to its group, SIGKILL after
 * `timeoutMs`. Removes the pid file. Returns the pid it stopped.
 */
export async function stopTracked(t: Tracked, timeoutMs: number): Promise<number | undefined> {
  const pid = runningPid(t);
  if (pid !== undefined) {
    signalGroup(pid, 'SIGTERM');
    const deadline = Date.now() + timeoutMs;
    while (isOurs(pid, t.bin) && Date.now() < deadline) await sleep(100);
    if (isOurs(pid, t.bin)) {
      signalGroup(pid, 'SIGKILL');
      while (isOurs(pid, t.bin)) await sleep(50);
    }
  }
  rmSync(pidFile(t), { force: true });
  return pid;
}

/** The last `n` lines of the log of `t`, for error messages. */
export function logTail(t: Tracked, n = 15): string {
  try {
    return readFileSync(logFile(t), 'utf8').trimEnd().split('\n').slice(-n).join('\n');
  } catch {
    return '(no log)';
  }
}
