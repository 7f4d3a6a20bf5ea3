// batchJobWorkflow: many documents, each a documentJobWorkflow child, at most
// `concurrency` at a time. A child's failure is counted, never fatal. Outcomes
// are flushed to blob segments so neither history nor query answers grow with
// the batch, and after `itemsPerRun` children the workflow continues as new.
import {
  ApplicationFailure,
  CancellationScope,
  ChildWorkflowCancellationType,
  ChildWorkflowFailure,
  condition,
  continueAsNew,
  isCancellation,
  ParentClosePolicy,
  proxyLocalActivities,
  setHandler,
  startChild,
  workflowInfo,
} from '@temporalio/workflow';
import type { JobActivities } from './activities';
import { batchProgressQuery, cancelBatchSignal } from './definitions';
import { documentJobWorkflow } from './document';
import type {
  BatchCounts,
  BatchItem,
  BatchJobInput,
  BatchJobOutput,
  BatchOutcome,
  BatchProgress,
} from './types';

const light = proxyLocalActivities<JobActivities>({
  startToCloseTimeout: '2 minutes',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumAttempts: 10 },
});

const PAGE = 100;
const FLUSH_EVERY = 100;

/** Job id of a batch item: stable across runs, valid as a NATS subject token. */
export function batchItemJobId(batchId: string, index: number): string {
  return `${batchId}-${index}`;
}

export async function batchJobWorkflow(input: BatchJobInput): Promise<BatchJobOutput> {
  const { batchId, manifestRef, total } = input;
  const concurrency = Math.max(1, input.concurrency);
  const itemsPerRun = input.itemsPerRun ?? 1000;
  const counts: BatchCounts = input.counts ?? { total, completed: 0, failed: 0, cancelled: 0 };
  const segments = [...(input.segments ?? [])];
  let pending: BatchOutcome[] = [];
  let running = 0;
  let cancelled = false;
  const children = new CancellationScope();

  setHandler(
    batchProgressQuery,
    (): BatchProgress => ({
      status: cancelled ? 'cancelled' : 'running',
      counts: { ...counts, running },
      segments,
      pending,
    }),
  );
  setHandler(cancelBatchSignal, () => {
    cancelled = true;
    children.cancel();
  });

  const record = (o: BatchOutcome) => {
    counts[o.status] += 1;
    pending.push(o);
  };
  const flush = async () => {
    if (!pending.length) return;
    const n = pending.length;
    const batch = pending.slice(0, n);
    segments.push(await CancellationScope.nonCancellable(() => light.storeBatchOutcomes(batch)));
    pending = pending.slice(n);
  };

  const runChild = async (
    index: number,
    item: BatchItem & { job: NonNullable<BatchItem['job']> },
  ) => {
    const jobId = batchItemJobId(batchId, index);
    const base = { index, customId: item.customId, jobId };
    try {
      const handle = await startChild(documentJobWorkflow, {
        workflowId: jobId,
        args: [{ ...item.job, jobId, batchId, customId: item.customId }],
        cancellationType: ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
        parentClosePolicy: ParentClosePolicy.REQUEST_CANCEL,
        memo: { batchId, customId: item.customId },
      });
      const out = await handle.result();
      record({ ...base, status: out.status, resultRef: out.resultRef });
    } catch (err) {
      if (
        isCancellation(err) ||
        (err instanceof ChildWorkflowFailure && isCancellation(err.cause))
      ) {
        record({ ...base, status: 'cancelled' });
      } else {
        record({ ...base, status: 'failed', error: failureMessage(err) });
      }
    } finally {
      running -= 1;
    }
  };

  let next = input.next ?? 0;
  const startedHere = next;
  let page: BatchItem[] = [];
  let pageStart = next;
  const inFlight: Promise<void>[] = [];
  while (next < total && !cancelled && next - startedHere < itemsPerRun) {
    if (workflowInfo().continueAsNewSuggested && next > startedHere) break;
    await condition(() => running < concurrency || cancelled);
    if (cancelled) break;
    if (next >= pageStart + page.length) {
      pageStart = next;
      page = await light.loadBatchItems(manifestRef, next, PAGE);
      if (!page.length) throw ApplicationFailure.nonRetryable(`manifest ends before item ${next}`);
    }
    const item = page[next - pageStart] as BatchItem;
    if (item.job) {
      running += 1;
      const index = next;
      const job = item.job;
      inFlight.push(children.run(() => runChild(index, { ...item, job })));
    } else {
      record({ index: next, customId: item.customId, status: 'failed', error: item.error });
    }
    next += 1;
    if (pending.length >= FLUSH_EVERY) await flush();
  }
  await Promise.all(inFlight);
  if (cancelled) counts.cancelled += total - next;
  await flush();

  if (!cancelled && next < total) {
    await continueAsNew<typeof batchJobWorkflow>({ ...input, next, counts, segments });
  }
  return { batchId, status: cancelled ? 'cancelled' : 'completed', counts, segments };
}

function failureMessage(err: unknown): string {
  let e: unknown = err;
  // The readable reason is the innermost ApplicationFailure's message.
  while (e instanceof Error && e.cause instanceof Error) e = e.cause;
  return e instanceof Error ? e.message : String(e);
}
