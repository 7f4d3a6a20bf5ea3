// Health probes that talk to the servers the way the service will: a real
// gRPC call through @temporalio/client, and a real NATS connection that asks
// JetStream for its account info. Each returns a one-line detail or throws.
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { Connection } from '@temporalio/client';
import type { StackConfig } from '../config/stack';

const PROBE_TIMEOUT_MS = 3_000;

export async function probeTemporal(c: StackConfig): Promise<string> {
  const conn = await Connection.connect({
    // The server this stack runs, whatever address clients are pointed at.
    address: `${c.host}:${c.temporal.port}`,
    connectTimeout: PROBE_TIMEOUT_MS,
  });
  try {
    const { status } = await conn.healthService.check({});
    // 1 = SERVING in grpc.health.v1
    if (status !== 1) throw new Error(`gRPC health status ${status}`);
    const ns = await conn.workflowService.describeNamespace({ namespace: c.temporal.namespace });
    return `namespace ${ns.namespaceInfo?.name ?? c.temporal.namespace} ready`;
  } finally {
    await conn.close();
  }
}

export async function probeNats(c: StackConfig): Promise<string> {
  const res = await fetch(`${c.nats.monitorUrl}/healthz?js-enabled-only=true`, {
    signal: AbortSignal.timeout(PROBE_TIMEOUT_MS),
  });
  if (!res.ok) throw new Error(`monitor /healthz answered ${res.status}: ${await res.text()}`);
  const nc = await connect({
    servers: `${c.host}:${c.nats.port}`,
    timeout: PROBE_TIMEOUT_MS,
    reconnect: false,
  });
  try {
    const jsm = await jetstreamManager(nc);
    const info = await jsm.getAccountInfo();
    return `JetStream enabled, ${info.streams} stream(s)`;
  } finally {
    await nc.close();
  }
}
