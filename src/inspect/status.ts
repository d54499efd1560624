import type { Namespace } from 'etcd3';
import { AsyncQueue } from '../core/async-queue.js';
import { InvalidArgumentError } from '../core/errors.js';
import { checkRoot, DEFAULT_SERVICE_ROOT } from '../recipes/services/layout.js';
import { checkInspectArgs, type InspectOptions } from './read.js';
import { discoverRecipes, inspectRecipe, RECIPE_KINDS, type RecipeInspection, type RecipeKind } from './discover.js';
import { inspectionJSON } from './format.js';
import { LiveView } from './live.js';

/** Options of {@link inspectStatus} and {@link watchStatus}. */
export interface StatusOptions extends InspectOptions {
  /** What `name` is; default: told from the keys under it (see {@link discoverRecipes}). */
  kind?: RecipeKind;
  /** The service registry's root, for services (default `'services/'`). */
  root?: string;
}

/** Options of {@link watchStatus}. */
export interface WatchStatusOptions extends StatusOptions {
  /** Re-read at least this often (ms), for lease TTLs; default 5000. */
  periodMs?: number;
}

function checkStatusOptions(client: unknown, name: unknown, options: StatusOptions): string {
  checkInspectArgs(client, name, options);
  if (typeof name !== 'string') throw new InvalidArgumentError('name', 'must be a string');
  if (options.kind !== undefined && !RECIPE_KINDS.includes(options.kind)) {
    throw new InvalidArgumentError(
      'options.kind',
      `must be one of ${RECIPE_KINDS.join(', ')}, got ${JSON.stringify(options.kind)}`,
    );
  }
  const root = options.root ?? DEFAULT_SERVICE_ROOT;
  checkRoot(root);
  return root;
}

/**
 * What `etcd-recipes status NAME` shows: every recipe named `name` (a lock
 * and an election can share a name; usually there is one), each inspected
 * with the function of its kind. With no `kind`, the kind is told from the
 * keys under `name` (and `__name`), then a service `<root><name>/` is tried.
 * Read-only. Resolves with `[]` if nothing is found.
 * @throws InvalidArgumentError for a bad client, name or options
 */
export async function inspectStatus(
  client: Namespace,
  name: string,
  options: StatusOptions = {},
): Promise<RecipeInspection[]> {
  const root = checkStatusOptions(client, name, options);
  const { signal, limit } = options;
  const opts = { signal, limit };
  if (options.kind) return [await inspectRecipe(client, { kind: options.kind, name, root }, opts)];
  const found = (await discoverRecipes(client, name, { signal })).filter(
    (r) => (r.kind === 'service' ? `${r.root ?? ''}${r.name}` : r.name) === name,
  );
  const out = await Promise.all(found.map((r) => inspectRecipe(client, r, opts)));
  if (out.length === 0 && !name.includes('/')) {
    const service = await inspectRecipe(client, { kind: 'service', name, root }, opts);
    if (service.kind === 'service' && service.inspection.total > 0) out.push(service);
  }
  return out;
}

/**
 * `etcd-recipes status NAME --watch`: the current {@link inspectStatus}
 * result, then a new one each time it changes (a watch on the recipe's keys,
 * plus a re-read every `periodMs` for lease TTLs), until `signal` aborts or
 * the loop is left. Read-only.
 * @throws InvalidArgumentError for a bad client, name or options
 */
export async function* watchStatus(
  client: Namespace,
  name: string,
  options: WatchStatusOptions = {},
): AsyncGenerator<RecipeInspection[], void, undefined> {
  const root = checkStatusOptions(client, name, options);
  options.signal?.throwIfAborted();
  const results = new AsyncQueue<RecipeInspection[]>({ signal: options.signal });
  let last = '';
  const view = new LiveView(
    client,
    [Buffer.from(name), Buffer.from(`__${name}`), Buffer.from(`${root}${name}/`)],
    () => inspectStatus(client, name, options),
    (r) => {
      // TTLs tick every second; a new picture is worth showing only if something else changed, or a TTL did.
      const json = inspectionJSON(r);
      if (json === last) return;
      last = json;
      results.push(r);
    },
    (err) => results.fail(err),
    { periodMs: options.periodMs ?? 5000 },
  );
  try {
    view.start().catch((err: unknown) => results.fail(err));
    yield* results;
  } finally {
    view.close();
  }
}
