// createActivities: the worker's implementation of JobActivities, built from
// its dependencies (one engine, the blob store, NATS events, a Temporal client).
import type { JobActivities } from '../workflows/activities';
import type { ActivityDeps } from './deps';
import { makeGenerate } from './generate';
import { makePrepare } from './prepare';
import { makeStore } from './store';

export type { ActivityDeps } from './deps';

export function createActivities(deps: ActivityDeps): JobActivities {
  return {
    prepareDocument: makePrepare(deps),
    generateAnswer: makeGenerate(deps),
    ...makeStore(deps),
  };
}
