// Starts the API process: HTTP server and the NATS intake, sharing one
// JobService (Temporal client, blob store, document sizer).
import { Client, Connection } from '@temporalio/client';
import { openBlobStore } from '../blobstore';
import type { ServiceConfig } from '../config/service';
import { connectNats, ensureStreams } from '../nats/connection';
import { NatsIntake } from '../nats/intake';
import { JobService } from './jobs';
import { ServiceMetrics } from './metrics';
import { buildApi } from './server';
import { DocumentSizer } from './sizer';

export interface RunningApi {
  url: string;
  jobs: JobService;
  stop(): Promise<void>;
}

export async function startApi(
  c: ServiceConfig,
  o: { port?: number; logger?: boolean } = {},
): Promise<RunningApi> {
  const nc = await connectNats(c.nats.url, 'specontext-api');
  await ensureStreams(nc);
  const blobs = await openBlobStore(c.blobs, nc);
  const connection = await Connection.connect({ address: c.temporal.address });
  const client = new Client({ connection, namespace: c.temporal.namespace });
  const jobs = new JobService({
    client,
    blobs,
    taskQueue: c.temporal.taskQueue,
    sizer: DocumentSizer.load(c.engine.model, c.engine.maxContext),
    batchConcurrency: c.batchConcurrency,
  });
  const metrics = new ServiceMetrics(client, c.temporal.taskQueue);
  metrics.watchWorkers(nc);
  const app = await buildApi({
    jobs,
    nc,
    client,
    metrics,
    maxDocumentBytes: c.api.maxDocumentBytes,
    maxBatchBytes: c.api.maxBatchBytes,
    logger: o.logger,
  });
  const intake = c.nats.intake
    ? new NatsIntake(nc, jobs, {
        info: (m) => app.log.info(m),
        warn: (m) => app.log.warn(m),
      })
    : undefined;
  intake?.start();
  const url = await app.listen({ host: c.api.host, port: o.port ?? c.api.port });
  return {
    url,
    jobs,
    async stop() {
      await intake?.stop();
      await app.close();
      metrics.stop();
      await nc.drain().catch(() => {});
      await connection.close();
      await blobs.close();
    },
  };
}
