import { logger } from './log.js';
import { retrying } from './retry.js';

const log = logger('client');

/*
 * After a call timed out, find a member that is a live Raft leader before the
 * call is retried (docs/faults.md, "Leader loss").
 *
 * A follower forwards a proposal to the leader it believes in. When that
 * leader has just died, the proposal is lost and the call waits for its whole
 * deadline; a retry sent to another follower that still believes in the dead
 * leader (election timeouts are randomized, 1–2 s by default) waits a second
 * deadline. So a timeout alone cannot tell "this member is slow" from "the
 * leader is gone": each member's Status can (who it believes leads, and
 * whether that member answers as the leader). The search asks every member,
 * with a short deadline, until one answers that it leads; the retry then goes
 * there. Only failed calls pay for it: nothing is asked while calls succeed.
 */

/** One member of etcd3's connection pool (its `Host`, internal to etcd3, stable in 1.1.x). */
export interface PoolMember {
  getServiceClient(name: 'Maintenance'): unknown;
}

interface StatusReply {
  leader?: string;
  header?: { member_id?: string };
}

type StatusCall = (
  request: object,
  options: { deadline: number },
  callback: (err: Error | null, reply?: StatusReply) => void,
) => void;

/** How long one member may take to tell its status; a frozen member must not hold the search up. */
const STATUS_TIMEOUT_MS = 500;
/** How long the search goes on without finding a leader; the election of etcd's default timings takes 1–2 s. */
const SEARCH_MS = 3000;
/** Pause between rounds of the search at most, so that the new leader is seen soon after it is elected. */
const ROUND_PAUSE_MS = 100;

class NoLiveLeader extends Error {
  constructor() {
    super('no member answers as the Raft leader yet');
    this.name = 'NoLiveLeader';
  }
}

/** The live leader among a client's members, searched for once at a time, and remembered for a moment. */
export class LeaderSearch {
  #members: readonly PoolMember[] = [];
  #signal: AbortSignal | undefined;
  #running: Promise<void> | undefined;
  #found: { member: PoolMember; until: number } | undefined;

  /** @param preferMs - how long calls prefer a leader once found */
  constructor(private readonly preferMs: number) {}

  /** The pool's members, and the signal that ends any search (the client closed). */
  attach(members: readonly PoolMember[], signal: AbortSignal): void {
    this.#members = members;
    this.#signal = signal;
  }

  /** The member found leading less than `preferMs` ago, if any. */
  get leader(): PoolMember | undefined {
    const found = this.#found;
    return found && performance.now() < found.until ? found.member : undefined;
  }

  /**
   * Resolves once a live leader is known, or the search gave up (bounded by
   * SEARCH_MS and the client's life). Concurrent callers share one search.
   */
  find(): Promise<void> {
    if (this.#members.length < 2) return Promise.resolve();
    this.#running ??= this.#search().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  async #search(): Promise<void> {
    const started = performance.now();
    try {
      const member = await retrying(() => this.#round(), {
        signals: [this.#signal],
        maxElapsedMs: SEARCH_MS,
        maxBackoffMs: ROUND_PAUSE_MS,
        retryIf: (err) => err instanceof NoLiveLeader,
      });
      this.#found = { member, until: performance.now() + this.preferMs };
      log('a live leader answered %d ms after a call timed out', Math.round(performance.now() - started));
    } catch (err) {
      log('no live leader found in %d ms: %s', Math.round(performance.now() - started), (err as Error).message);
    }
  }

  /** Asks every member at once; resolves with the first that answers as the leader. */
  #round(): Promise<PoolMember> {
    const members = this.#members;
    return new Promise((resolve, reject) => {
      let pending = members.length;
      for (const member of members) {
        void leads(member).then((yes) => {
          if (yes) resolve(member);
          else if (--pending === 0) reject(new NoLiveLeader());
        });
      }
    });
  }
}

/** True when `member` answers, within STATUS_TIMEOUT_MS, that it is the leader. */
function leads(member: PoolMember): Promise<boolean> {
  return new Promise((resolve) => {
    try {
      const maintenance = member.getServiceClient('Maintenance') as { status: StatusCall };
      // No metadata: etcd serves Status without a token, and an auth error here only means "cannot tell".
      maintenance.status({}, { deadline: Date.now() + STATUS_TIMEOUT_MS }, (err, reply) => {
        const id = reply?.header?.member_id;
        resolve(!err && !!id && id !== '0' && reply?.leader === id);
      });
    } catch {
      // A closed pool: nobody to ask.
      resolve(false);
    }
  });
}
