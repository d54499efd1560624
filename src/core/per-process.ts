/*
 * State that must exist once per process, not once per copy of this library.
 * A process can load several copies: the ESM and the CJS build side by side,
 * or two versions in one dependency tree. They share Sessions (checkSession
 * accepts one from another copy), so whatever keeps same-session callers
 * apart must be shared too. Each slot lives on `globalThis` under a
 * `Symbol.for` key; its shape is a contract between copies, possibly of
 * different versions, so a slot's shape never changes: a new shape gets a new
 * name (the `.v1` suffix).
 */

/**
 * The process-wide value named `name`, made by `make` on first use by any
 * copy. Called lazily (never at import time), so that importing the library
 * has no side effect.
 */
export function perProcess<T extends object>(name: string, make: () => T): T {
  const slot = Symbol.for(`etcd-recipes.${name}`);
  const store = globalThis as unknown as Record<symbol, T | undefined>;
  const found = store[slot];
  if (found !== undefined) return found;
  const made = make();
  Object.defineProperty(globalThis, slot, { value: made, enumerable: false, writable: false, configurable: false });
  return made;
}
