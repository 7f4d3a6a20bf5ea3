// Helpers for the engine tests: temp copies of a fixture, corrupted on purpose.
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export const FIXTURES = path.join(__dirname, 'fixtures');
export const SMOLLM2 = path.join(__dirname, '..', 'models', 'smollm2-135m-instruct');

const temps: string[] = [];

/** A scratch copy of test/fixtures/<name>; removed by cleanupCopies(). */
export function copyFixture(name: string): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), `spx-${name}-`));
  cpSync(path.join(FIXTURES, name), dir, { recursive: true });
  temps.push(dir);
  return dir;
}

export function cleanupCopies(): void {
  for (const dir of temps.splice(0)) rmSync(dir, { recursive: true, force: true });
}

type Header = Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;

/** Rewrites dir/model.safetensors with its JSON header changed by `edit`. */
export function editSafetensorsHeader(dir: string, edit: (header: Header) => void): void {
  const file = path.join(dir, 'model.safetensors');
  const bytes = readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) as Header;
  edit(header);
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(file, Buffer.concat([len, json, bytes.subarray(8 + n)]));
}

/** A tensor of the header other than __metadata__. */
export function someTensor(header: Header, name = 'model.embed_tokens.weight') {
  const t = header[name];
  if (!t) throw new Error(`fixture has no ${name}`);
  return t;
}

export function editJson(file: string, edit: (json: Record<string, unknown>) => void): void {
  const json = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  edit(json);
  writeFileSync(file, JSON.stringify(json));
}

export interface Reference {
  prompt_text: string;
  prompt_ids: number[];
  generated_ids: number[];
}

export function reference(name: string): Reference {
  return JSON.parse(readFileSync(path.join(FIXTURES, name, 'reference.json'), 'utf8')) as Reference;
}
