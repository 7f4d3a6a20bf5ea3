// vitest setupFile: points each test file at the run's shared stack.
import { inject } from 'vitest';

Object.assign(process.env, inject('stackEnv'));
