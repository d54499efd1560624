/** The signals the tool handles itself: forwarded to a running child, or ending a wait. */
const HANDLED_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
export type HandledSignal = (typeof HANDLED_SIGNALS)[number];

/** The reason `Interrupts.signal` aborts with. */
export class InterruptedError extends Error {
  readonly signal: HandledSignal;
  constructor(signal: HandledSignal) {
    super(`interrupted by ${signal}`);
    this.name = 'InterruptedError';
    this.signal = signal;
  }
}

/**
 * SIGINT, SIGTERM and SIGHUP sent to the tool. Without handlers Node would
 * die at once and leave our keys until their lease expires; instead the
 * first signal aborts `signal` (a wait gives up and cleans up), and while a
 * child runs every signal is handed to the listeners (which forward it).
 * A second signal while nothing listens exits at once: a cleanup stuck on
 * an unreachable etcd must not make the tool unkillable.
 */
export class Interrupts {
  readonly #controller = new AbortController();
  readonly #listeners = new Set<(signal: HandledSignal) => void>();
  readonly #handlers = new Map<HandledSignal, () => void>();

  constructor() {
    for (const sig of HANDLED_SIGNALS) {
      const handler = () => this.#receive(sig);
      this.#handlers.set(sig, handler);
      process.on(sig, handler);
    }
  }

  /** Aborted (with an {@link InterruptedError}) at the first signal. */
  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** The first signal received, if any. */
  get received(): HandledSignal | undefined {
    return this.signal.aborted ? (this.signal.reason as InterruptedError).signal : undefined;
  }

  /** Calls `listener` for every signal from now on; returns the unsubscribe function. */
  listen(listener: (signal: HandledSignal) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Removes the process handlers. */
  dispose(): void {
    for (const [sig, handler] of this.#handlers) process.removeListener(sig, handler);
    this.#handlers.clear();
  }

  #receive(sig: HandledSignal): void {
    const first = !this.signal.aborted;
    if (first) this.#controller.abort(new InterruptedError(sig));
    if (this.#listeners.size > 0) {
      for (const l of [...this.#listeners]) l(sig);
    } else if (!first) {
      process.exit(128 + signalNumber(sig));
    }
  }
}

/** The number of a handled signal (Linux and macOS agree on these three). */
export function signalNumber(sig: HandledSignal): number {
  return sig === 'SIGHUP' ? 1 : sig === 'SIGINT' ? 2 : 15;
}
