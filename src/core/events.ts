/**
 * Emits `event` on `emitter` so that a throwing listener cannot break the
 * emitter's own state machine: the listener's error is rethrown on the next
 * tick (an uncaught exception, as for any listener error elsewhere). An
 * `'error'` event is emitted only when someone listens: our emitters never
 * crash a process that did not ask to hear about errors.
 */
export function emitSafely(emitter: NodeJS.EventEmitter, event: string | symbol, args: readonly unknown[]): void {
  if (event === 'error' && emitter.listenerCount('error') === 0) return;
  try {
    emitter.emit(event, ...args);
  } catch (err) {
    process.nextTick(() => {
      throw err;
    });
  }
}
