// Prometheus metrics of the service, served by the API at /metrics:
// - jobs by state: counted in Temporal's visibility store at scrape time;
// - queue depth: the activity backlog of the task queue (generation waiting
//   for a batch slot), from Temporal's task queue stats;
// - tokens/s and engine batch occupancy: from the stats each worker publishes
//   on `workers.stats.<host>` (the API has no engine of its own).
import type { NatsConnection, Subscription } from '@nats-io/nats-core';
import type { Client } from '@temporalio/client';
import { Counter, Gauge, Registry } from 'prom-client';

interface WorkerStats {
  host: string;
  device: string;
  maxBatch: number;
  activeRequests: number;
  queuedRequests: number;
  decodeTokens: number;
  at: number;
  /** Computed here from the previous report. */
  tokensPerS?: number;
}

const STATES = {
  running: 'Running',
  completed: 'Completed',
  failed: 'Failed',
  cancelled: 'Canceled',
  terminated: 'Terminated',
  timed_out: 'TimedOut',
} as const;

export class ServiceMetrics {
  readonly registry = new Registry();
  readonly submitted: Counter<'via'>;
  readonly rejected: Counter<'via' | 'reason'>;
  private readonly last = new Map<string, WorkerStats>();
  private sub: Subscription | undefined;

  constructor(
    private readonly client: Client,
    private readonly taskQueue: string,
  ) {
    const registers = [this.registry];
    this.submitted = new Counter({
      name: 'specontext_jobs_submitted_total',
      help: 'Jobs accepted, by way in (http, nats, batch)',
      labelNames: ['via'],
      registers,
    });
    this.rejected = new Counter({
      name: 'specontext_requests_rejected_total',
      help: 'Requests or messages refused as invalid, by way in and HTTP status',
      labelNames: ['via', 'reason'],
      registers,
    });
    const self = this;
    new Gauge({
      name: 'specontext_jobs',
      help: 'Document jobs by state (Temporal visibility)',
      labelNames: ['state'],
      registers,
      async collect() {
        await Promise.all(
          Object.entries(STATES).map(async ([state, status]) => {
            const n = await self.count(`ExecutionStatus = "${status}"`);
            if (n !== undefined) this.set({ state }, n);
          }),
        );
      },
    });
    new Gauge({
      name: 'specontext_queue_depth',
      help: 'Generation activities waiting for a free engine batch slot',
      registers,
      async collect() {
        const n = await self.backlog();
        if (n !== undefined) this.set(n);
      },
    });
    const perWorker = (name: string, help: string, value: (s: WorkerStats) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ['host', 'device'],
        registers,
        collect() {
          this.reset();
          for (const s of self.last.values())
            this.set({ host: s.host, device: s.device }, value(s));
        },
      });
    perWorker('specontext_engine_batch_occupancy', 'Active requests / batch capacity', (s) =>
      s.maxBatch ? s.activeRequests / s.maxBatch : 0,
    );
    perWorker(
      'specontext_engine_active_requests',
      'Requests in the engine batch',
      (s) => s.activeRequests,
    );
    perWorker(
      'specontext_engine_queued_requests',
      'Requests queued inside the engine',
      (s) => s.queuedRequests,
    );
    perWorker(
      'specontext_generated_tokens',
      'Tokens decoded by the engine since it opened',
      (s) => s.decodeTokens,
    );
    perWorker(
      'specontext_tokens_per_second',
      'Decode tokens/s over the last stats interval',
      (s) => s.tokensPerS ?? 0,
    );
  }

  /** Follows worker stats; tokens/s is the rate between a worker's last two reports. */
  watchWorkers(nc: NatsConnection): void {
    this.sub = nc.subscribe('workers.stats.*', {
      callback: (_err, msg) => {
        try {
          const s = JSON.parse(msg.string()) as WorkerStats;
          const prev = this.last.get(s.host);
          if (prev && s.at > prev.at && s.decodeTokens >= prev.decodeTokens) {
            s.tokensPerS = ((s.decodeTokens - prev.decodeTokens) * 1000) / (s.at - prev.at);
          }
          this.last.set(s.host, s);
        } catch {
          // Not ours: ignore.
        }
      },
    });
  }

  stop(): void {
    this.sub?.unsubscribe();
  }

  private async count(filter: string): Promise<number | undefined> {
    try {
      const r = await this.client.workflow.count(
        `WorkflowType = "documentJobWorkflow" AND ${filter}`,
      );
      return r.count;
    } catch {
      return undefined;
    }
  }

  private async backlog(): Promise<number | undefined> {
    try {
      const r = await this.client.workflowService.describeTaskQueue({
        namespace: this.client.options.namespace,
        taskQueue: { name: this.taskQueue },
        taskQueueType: 2, // TASK_QUEUE_TYPE_ACTIVITY
        reportStats: true,
      });
      const n = r.stats?.approximateBacklogCount;
      return n === undefined || n === null ? undefined : Number(n);
    } catch {
      return undefined;
    }
  }
}
