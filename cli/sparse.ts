import type { Command } from 'commander';

export function registerSparseCommands(_program: Command): void {}
