import type { Etcd3 } from 'etcd3';
import { createClient, type ClientOptions } from '../core/client.js';
import { isAuthRefusal } from '../core/etcd-errors.js';
import type { ConnectionOptions } from './connection.js';
import { CliExit, EXIT, UsageError } from './exit-codes.js';
import { formatDuration } from './args.js';

/**
 * Builds the tool's etcd client: the library's coordination client
 * (per-call deadlines, no hidden re-sends; docs/faults.md).
 * @throws UsageError for settings etcd3 rejects (e.g. TLS options it cannot use)
 */
function createEtcdClient(o: ConnectionOptions): Etcd3 {
  const options: ClientOptions = { hosts: o.endpoints, dialTimeout: o.dialTimeoutMs };
  if (o.cacert || o.cert) {
    // etcd3 types the CA as required; grpc-js takes undefined as "the system's CAs".
    options.credentials = { rootCertificate: o.cacert as Buffer, privateKey: o.key, certChain: o.cert };
  }
  if (o.user !== undefined) options.auth = { username: o.user, password: o.password ?? '' };
  try {
    return createClient(options);
  } catch (err) {
    throw new UsageError(`cannot configure the etcd client: ${(err as Error).message}`);
  }
}

/**
 * Connects and checks that etcd answers (one Status call, which also
 * authenticates when a user is set) within the dial timeout, so that a
 * missing etcd gives one line naming the endpoints instead of a wait.
 * @throws CliExit with {@link EXIT.UNAVAILABLE} when no endpoint answers, {@link EXIT.ERROR} when etcd refuses us
 */
export async function connect(o: ConnectionOptions): Promise<Etcd3> {
  const client = createEtcdClient(o);
  let timer: NodeJS.Timeout | undefined;
  try {
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('no answer')), o.dialTimeoutMs);
    });
    await Promise.race([client.maintenance.status({ deadline: Date.now() + o.dialTimeoutMs }), timedOut]);
    return client;
  } catch (err) {
    client.close();
    // grpc-js appends resolver notes on further lines and after the first sentence of its detail.
    const message = ((err as Error).message ?? String(err)).split('\n')[0]!.replace(/\s*Resolution note:.*$/, '');
    const where = o.endpoints.join(', ');
    if (isAuthRefusal(message)) {
      throw new CliExit(EXIT.ERROR, `etcd at ${where} refused us: ${message}`);
    }
    throw new CliExit(
      EXIT.UNAVAILABLE,
      `cannot reach etcd at ${where} within ${formatDuration(o.dialTimeoutMs)}: ${message}`,
    );
  } finally {
    clearTimeout(timer);
  }
}
