// A small typed client of the HTTP API, used by the CLI (submit, status,
// batches, demo). Errors carry the server's message.
import type { BatchView, JobView } from './jobs';
import type { JobRequest } from './schemas';

export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

export class ApiClient {
  constructor(readonly base: string) {}

  private async call<T>(path: string, init?: RequestInit): Promise<T> {
    let r: Response;
    try {
      r = await fetch(`${this.base}${path}`, init);
    } catch (err) {
      throw new ApiError(
        0,
        `cannot reach the API at ${this.base}: ${(err as Error).message} (is \`specontext api\` or \`specontext dev\` running?)`,
      );
    }
    const text = await r.text();
    if (!r.ok) {
      let message = text;
      try {
        message = (JSON.parse(text) as { message?: string }).message ?? text;
      } catch {}
      throw new ApiError(r.status, `${r.status}: ${message}`);
    }
    return (
      r.headers.get('content-type')?.includes('json') && !path.endsWith('/results')
        ? JSON.parse(text)
        : text
    ) as T;
  }

  submitJob(job: Partial<JobRequest> & Pick<JobRequest, 'document' | 'instructions'>) {
    return this.call<{ id: string; created: boolean }>('/v1/jobs', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(job),
    });
  }

  job(id: string) {
    return this.call<JobView>(`/v1/jobs/${encodeURIComponent(id)}`);
  }

  cancelJob(id: string) {
    return this.call<JobView>(`/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
  }

  async waitJob(id: string, onProgress?: (v: JobView) => void, everyMs = 500): Promise<JobView> {
    for (;;) {
      const v = await this.job(id);
      onProgress?.(v);
      if (TERMINAL.has(v.status)) return v;
      await new Promise((r) => setTimeout(r, everyMs));
    }
  }

  submitBatch(jsonl: string) {
    return this.call<BatchView & { invalid_lines: number }>('/v1/batches', {
      method: 'POST',
      headers: { 'content-type': 'application/jsonl' },
      body: jsonl,
    });
  }

  batch(id: string) {
    return this.call<BatchView>(`/v1/batches/${encodeURIComponent(id)}`);
  }

  batchResults(id: string) {
    return this.call<string>(`/v1/batches/${encodeURIComponent(id)}/results`);
  }
}
