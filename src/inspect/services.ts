import type { Namespace } from 'etcd3';
import { InvalidArgumentError } from '../core/errors.js';
import { showKey } from '../core/keys.js';
import { checkRoot, DEFAULT_SERVICE_ROOT } from '../recipes/services/layout.js';
import { checkInspectArgs, SnapshotReader, type InspectedKey, type InspectOptions } from './read.js';

/** Options of {@link inspectServices}. */
export interface InspectServicesOptions extends InspectOptions {
  /** The registry's root, as given to `ServiceRegistry.register` (default `'services/'`). */
  root?: string;
}

/** One registered instance. */
export interface InspectedInstance extends InspectedKey {
  /** The instance's ID (the key after `<root><service>/`). */
  readonly id: string;
  /** Its address (`address`, or Go's `Addr`); undefined if the value is not an instance's JSON. */
  readonly address: string | undefined;
  /** Its metadata (`metadata`, or Go's `Metadata`), `{}` when absent. */
  readonly metadata: Readonly<Record<string, unknown>>;
  /** When it (re-)registered, if the value says. */
  readonly registeredAt: string | undefined;
  /** The raw value, as UTF-8. */
  readonly value: string;
}

/** What {@link inspectServices} reports. */
export interface ServicesInspection {
  /** The service's name, as given. */
  readonly name: string;
  /** The prefix its instances live under, `<root><service>/`. */
  readonly prefix: string;
  /** The store revision the keys were read at. */
  readonly revision: bigint;
  /** The instances, oldest registration first. */
  readonly instances: InspectedInstance[];
  /** Keys under the prefix in all. */
  readonly total: number;
  /** True if more instances exist than `options.limit` allowed to list. */
  readonly truncated: boolean;
}

/**
 * The registered instances of a service ({@link ServiceRegistry}, or Go's
 * `naming/endpoints` under the same prefix), each with its lease and the
 * lease's remaining TTL. Read-only.
 * @param service - the service's name (no `/`)
 * @throws InvalidArgumentError for a bad client, service, root or options
 */
export async function inspectServices(
  client: Namespace,
  service: string,
  options: InspectServicesOptions = {},
): Promise<ServicesInspection> {
  const limit = checkInspectArgs(client, service, options, 'service');
  if (typeof service !== 'string' || service.includes('/')) {
    throw new InvalidArgumentError(
      'service',
      `must be a string without '/', got ${typeof service === 'string' ? JSON.stringify(service) : 'a Buffer'}`,
    );
  }
  const root = options.root ?? DEFAULT_SERVICE_ROOT;
  checkRoot(root);
  const prefix = `${root}${service}/`;
  const reader = new SnapshotReader(client, options.signal);
  const list = await reader.describedList(Buffer.from(prefix), limit);
  const instances = list.keys.map((k, i): InspectedInstance => {
    const value = list.kvs[i]!.value.toString();
    const o = parseObject(value);
    const address = typeof o?.address === 'string' ? o.address : typeof o?.Addr === 'string' ? o.Addr : undefined;
    const meta = o?.metadata ?? o?.Metadata;
    return {
      ...k,
      id: showKey(list.kvs[i]!.key.subarray(Buffer.byteLength(prefix))),
      address,
      value,
      metadata:
        typeof meta === 'object' && meta !== null && !Array.isArray(meta) ? (meta as Record<string, unknown>) : {},
      registeredAt: typeof o?.registeredAt === 'string' ? o.registeredAt : undefined,
    };
  });
  return { name: service, prefix, revision: reader.revision, instances, total: list.total, truncated: list.truncated };
}

/** @internal The value as a JSON object, or undefined. */
export function parseObject(value: string): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(value);
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
