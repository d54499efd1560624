import type { WatchEvent } from './watch-types.js';

/*
 * A line's feed may follow several watches (Queue: the items and the waiter
 * keys). One write can show up in two of them (a claim deletes an item and
 * the claimer's waiter key at one revision), and etcd sends each watch's
 * share as its own response, in either order. A waiter that acts between the
 * two sees the line half moved and takes the next waiter's item
 * (docs/internals.md, "The line's feed"). This holds a write's deletes until
 * the write is whole, then hands its events on together.
 */

/**
 * How long deletes wait for the rest of their write before they go on alone
 * (a waiter that gave up, a claim by a consumer outside the line). The rest
 * of a write normally follows at once: etcd queues every watch's share of one
 * revision on the stream before any later revision's.
 */
export const HOLD_MS = 20;

/** What is held: the events of one revision, and which watches sent some. */
interface Held {
  revision: bigint;
  events: WatchEvent[];
  from: Set<number>;
  timer: NodeJS.Timeout;
}

/**
 * Hands on the events of `watches` watches on one stream, the deletes of a
 * revision only once every watch sent its share of that revision, a later
 * revision arrived (the stream carries revisions in order), or HOLD_MS
 * passed. Puts of a revision with no held delete go on at once: a new item
 * must wake its waiter without delay. Only for watches etcd keeps in sync:
 * one that fell behind (a slow reader) catches up in batches of its own,
 * and a write can then reach waiters in two parts again.
 */
export class WholeWrites {
  readonly #watches: number;
  readonly #deliver: (events: WatchEvent[]) => void;
  #held: Held | undefined;

  constructor(watches: number, deliver: (events: WatchEvent[]) => void) {
    this.#watches = watches;
    this.#deliver = deliver;
  }

  /** One response of watch number `watch` (0-based): its events, in order. */
  add(watch: number, events: WatchEvent[]): void {
    const out: WatchEvent[] = [];
    for (const event of events) {
      const revision = event.kv.modRevision;
      if (this.#held && revision > this.#held.revision) this.#release(out);
      const held = this.#held;
      if (held && revision === held.revision) {
        held.events.push(event);
        held.from.add(watch);
      } else if (held && revision < held.revision) {
        // An older revision after a newer one: a watch catching up (etcd kept it out of sync). It goes
        // on first; the held write stays held.
        out.push(event);
      } else if (event.type === 'delete' && this.#watches > 1) {
        this.#held = { revision, events: [event], from: new Set([watch]), timer: this.#timer() };
      } else {
        out.push(event);
      }
    }
    if (this.#held && this.#held.from.size === this.#watches) this.#release(out);
    if (out.length) this.#deliver(out);
  }

  /** Drops what is held (the feed ended: its subscribers read again). */
  close(): void {
    if (this.#held) clearTimeout(this.#held.timer);
    this.#held = undefined;
  }

  #release(out: WatchEvent[]): void {
    const held = this.#held;
    if (!held) return;
    clearTimeout(held.timer);
    this.#held = undefined;
    out.push(...held.events);
  }

  #timer(): NodeJS.Timeout {
    // On expiry, responses already read from the socket come first (setImmediate runs after the poll
    // phase): a busy event loop must not send a delete on alone while the rest of its write is there.
    const timer = setTimeout(() => {
      setImmediate(() => {
        if (this.#held?.timer !== timer) return;
        const out: WatchEvent[] = [];
        this.#release(out);
        this.#deliver(out);
      }).unref();
    }, HOLD_MS).unref();
    return timer;
  }
}
