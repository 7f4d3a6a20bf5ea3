// Whether a TCP port can be bound, so that `up` reports a port taken by
// another program clearly instead of leaving a server that dies on start.
import net from 'node:net';

export function portIsFree(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen({ port, host, exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

/**
 * A free port for an isolated test stack, taken below Linux's ephemeral range
 * (32768-60999): a port the OS hands out for `listen(0)` can be taken as the
 * local port of some outgoing connection while a stack restarts on it.
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    if (await portIsFree(port, host)) return port;
  }
  throw new Error('no free port found in 20000-31999');
}
