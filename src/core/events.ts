import type { EventEmitter } from 'node:events';

/**
 * Emits `event` on `emitter` (typed by its event map) so that a throwing
 * listener cannot break the emitter's own state machine: the listener's
 * error is rethrown on the next tick (an uncaught exception, as for any
 * listener error elsewhere). An `'error'` event is emitted only when
 * someone listens: our emitters never crash a process that did not ask to
 * hear about errors.
 */
export function emitSafely<E extends Record<keyof E, unknown[]>, K extends keyof E & string>(
  emitter: EventEmitter<E>,
  event: K,
  ...args: E[K]
): void {
  const untyped = emitter as unknown as NodeJS.EventEmitter;
  if (event === 'error' && untyped.listenerCount('error') === 0) return;
  try {
    untyped.emit(event, ...args);
  } catch (err) {
    process.nextTick(() => {
      throw err;
    });
  }
}
