import { InvalidArgumentError, LockNotHeldError } from '../../core/errors.js';
import type { HeldKey } from '../../core/holding.js';

/**
 * The one hold a lock object takes through its own `lock()` / `unlock()`
 * (Mutex, RWMutex): one at a time and never reentrant, since a second hold of
 * the same session on the same name would wait for the first forever.
 */
export class ObjectHold<M extends string> {
  #held: HeldKey | undefined;
  #mode: M | undefined;
  #locking = false;

  /** The hold, until it is released or lost. */
  get current(): HeldKey | undefined {
    return this.#held && !this.#held.released ? this.#held : undefined;
  }

  /** The mode of the current hold. */
  get mode(): M | undefined {
    return this.current && this.#mode;
  }

  /** The signal of the hold not yet unlocked, lost or not. */
  get signal(): AbortSignal | undefined {
    return this.#held?.signal;
  }

  /** Takes the hold through `acquire`; `busy` says why a second one is refused (built only then). */
  async take(mode: M, acquire: () => Promise<HeldKey | undefined>, busy: () => string): Promise<boolean> {
    if (this.current || this.#locking) throw new InvalidArgumentError('this', busy());
    this.#held = undefined;
    this.#locking = true;
    try {
      this.#held = await acquire();
      this.#mode = mode;
      return !!this.#held;
    } finally {
      this.#locking = false;
    }
  }

  /**
   * The hold not yet unlocked, in `mode`. With `lost: 'held'` a hold that was
   * lost still counts (its release is then quiet), otherwise it throws.
   */
  owned(mode: M, notHeld: () => string, lost: 'held' | 'not held'): HeldKey {
    const held = this.#held;
    if (!held || this.#mode !== mode || (lost === 'not held' && held.released)) throw new LockNotHeldError(notHeld());
    return held;
  }

  /** Releases the hold {@link ObjectHold.owned} finds. */
  async release(mode: M, notHeld: () => string, lost: 'held' | 'not held'): Promise<void> {
    const held = this.owned(mode, notHeld, lost);
    this.#held = undefined;
    await held.release();
  }
}
