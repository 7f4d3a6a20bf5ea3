import type { Command } from 'commander';

export function registerGenerateCommands(_program: Command): void {}
