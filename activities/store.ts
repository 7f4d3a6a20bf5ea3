// The light activities: combining results, publishing events, and reading and
// writing batch manifests and outcomes. All run as local activities.
import { getJson, putJson } from '../blobstore/store';
import type { JobActivities } from '../workflows/activities';
import type { BatchItem, InstructionResult, JobResult, StoreResultInput } from '../workflows/types';
import type { ActivityDeps } from './deps';

/** Parsed manifests, by ref: a batch reads its manifest a page at a time. */
const MANIFEST_CACHE = 4;

export function makeStore({
  blobs,
  events,
}: ActivityDeps): Omit<JobActivities, 'prepareDocument' | 'generateAnswer'> {
  const manifests = new Map<string, BatchItem[]>();
  const manifest = async (ref: string) => {
    let items = manifests.get(ref);
    if (!items) {
      items = await getJson<BatchItem[]>(blobs, ref);
      manifests.set(ref, items);
      if (manifests.size > MANIFEST_CACHE)
        manifests.delete(manifests.keys().next().value as string);
    }
    return items;
  };

  return {
    async storeJobResult({ jobId, prepared, answers }: StoreResultInput) {
      const results = await Promise.all(
        answers.map((a) => getJson<InstructionResult>(blobs, a.resultRef)),
      );
      const job: JobResult = {
        id: jobId,
        results,
        documentTokens: prepared.documentTokens,
        truncatedTokens: prepared.truncatedTokens,
      };
      return putJson(blobs, job);
    },
    async publishJobEvent(event) {
      await events.publish(event);
    },
    async loadBatchItems(manifestRef, start, count) {
      return (await manifest(manifestRef)).slice(start, start + count);
    },
    async storeBatchOutcomes(outcomes) {
      return putJson(blobs, outcomes);
    },
  };
}
