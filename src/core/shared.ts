/**
 * State that must be one per process, not one per copy of the library: when
 * the ESM and the CJS build are both loaded, each has its own module-level
 * variables, but both must agree on (for example) which clients are closed.
 * Kept on `globalThis` under a registered symbol, so every copy finds it.
 */
export function processWide<T>(name: string, create: () => T): T {
  const key = Symbol.for(`etcd-recipes:${name}`);
  const store = globalThis as unknown as Record<symbol, T | undefined>;
  let value = store[key];
  if (value === undefined) {
    value = create();
    store[key] = value;
  }
  return value;
}
