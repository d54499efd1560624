import { hostname } from 'node:os';
import type { ComparatorBuilder, Namespace } from 'etcd3';
import { abortReason, linkSignals } from '../../core/abort.js';
import { isRecipeError } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import { isTransient } from '../../core/etcd-errors.js';
import { inFreshSessions, type RoundOutcome } from '../../core/fresh-sessions.js';
import type { Session } from '../../core/session.js';
import {
  checkClient,
  checkFunction,
  checkInteger,
  checkName,
  checkOptions,
  checkSignal,
  checkValue,
} from '../../core/validate.js';
import { Election, observeLeader, type LeaderInfo } from './election.js';

const log = logger('election');

/** What {@link runAsLeader} passes to its task (and to `onElected`). */
export interface LeaderContext {
  /** Aborted the moment leadership may be lost, or when the outer signal aborts (same as the task's first argument). */
  readonly signal: AbortSignal;
  /** Our campaign key, `<name>/<lease hex>`. */
  readonly key: string;
  /** The create revision of our key: this term's fencing token (the name every recipe uses). */
  readonly fencingToken: bigint;
  /** The same as {@link LeaderContext.fencingToken} (Go's `Rev()`). */
  readonly revision: bigint;
  /** The Election object of this term (e.g. for `proclaim`). */
  readonly election: Election;
  /** The session of this term (a fresh one per term). */
  readonly session: Session;
  /**
   * An etcd3 Txn builder guarded by this term (`CreateRevision(key) == revision`):
   * its writes cannot land once the term is over. Throws NotLeaderError once
   * the term is known to be over.
   */
  ifLeader(): ComparatorBuilder;
}

/** Options of {@link runAsLeader}. */
export interface RunAsLeaderOptions {
  /** Our proposal, what observers see as the leader's value. Default `<hostname>:<pid>`. */
  value?: string | Buffer;
  /**
   * TTL in seconds of each term's session (default 60, as Go). A leader
   * process that dies without resigning blocks the election for up to this
   * long; 5–15 s suits most workers.
   */
  ttl?: number;
  /**
   * Stops everything: a pending campaign is withdrawn; a running task's
   * signal aborts, and once the task has settled we resign. `runAsLeader`
   * then rejects with the signal's reason.
   */
  signal?: AbortSignal;
  /** Called when we become leader, just before the task starts. */
  onElected?: (ctx: LeaderContext) => void;
  /**
   * Called once for every term of ours when it is over: after the task
   * settled and our key is gone. `reason` is the loss (a
   * `SessionExpiredError` or `NotLeaderError`), the outer signal's reason,
   * or undefined when the task finished and we resigned.
   */
  onDeposed?: (reason: unknown) => void;
  /**
   * Called for every observed change of leader: anyone's election or
   * proclaim (ours included) with the leader's value, and `undefined` when
   * nobody leads. Observed from the moment `runAsLeader` starts until it
   * settles. The second argument has the leader's key, revision and lease.
   */
  onNewLeader?: (value: string | undefined, leader: LeaderInfo | undefined) => void;
}

type Outcome<T> =
  | { kind: 'finished'; value: T }
  | { kind: 'threw'; error: unknown }
  | { kind: 'lost'; started: boolean }
  | { kind: 'stopped' };

function call<A extends unknown[]>(name: string, fn: ((...args: A) => void) | undefined, ...args: A): void {
  if (!fn) return;
  try {
    fn(...args);
  } catch (err) {
    log('runAsLeader: %s callback threw (ignored): %s', name, (err as Error)?.message);
  }
}

/**
 * Runs `task` while this process is the leader of election `name`, the
 * etcd analogue of Kubernetes' `leaderelection.RunOrDie`:
 *
 * 1. creates a fresh session (lease) and campaigns with `value`;
 * 2. once elected, runs `task(signal, ctx)`. `signal` aborts the moment
 *    leadership may be lost: the session's lease lost or about to expire,
 *    our key deleted, or the outer signal aborted;
 * 3. after a loss it waits for the task to settle (so two tasks of this
 *    call never overlap), closes that session and campaigns again with a
 *    new one, until the outer signal aborts.
 *
 * When the task returns while still leader, we resign and `runAsLeader`
 * resolves with its result. When it throws while still leader, we resign
 * (so another candidate takes over at once instead of after the TTL) and
 * `runAsLeader` rejects with that error: a failing leader is the caller's
 * decision to retry, restart or exit, not something to hide in a loop
 * (wrap the call in a loop to keep campaigning). A task that returns or
 * throws after its signal aborted for a loss is not an outcome: the loss
 * is, and we campaign again.
 *
 * The task must honour its signal: we resign only after it settled, so a
 * task that ignores the signal delays the handover (never breaks
 * exclusion). Use `ctx.ifLeader()` (fencing) for writes that must not land
 * after a loss: a process can be paused past its TTL.
 *
 * @returns what `task` returned
 * @throws the outer signal's reason when it aborts; the task's error
 */
export async function runAsLeader<T>(
  client: Namespace,
  name: string | Buffer,
  task: (signal: AbortSignal, ctx: LeaderContext) => Promise<T> | T,
  options: RunAsLeaderOptions = {},
): Promise<T> {
  checkClient(client);
  checkName(name, 'name');
  checkFunction(task, 'task');
  checkOptions(options);
  checkSignal(options.signal);
  const {
    value = `${hostname()}:${process.pid}`,
    ttl = 60,
    signal: outer,
    onElected,
    onDeposed,
    onNewLeader,
  } = options;
  checkValue(value, 'options.value');
  checkInteger(ttl, 'options.ttl', 1, 9_000_000_000);
  if (onElected !== undefined) checkFunction(onElected, 'options.onElected');
  if (onDeposed !== undefined) checkFunction(onDeposed, 'options.onDeposed');
  if (onNewLeader !== undefined) checkFunction(onNewLeader, 'options.onNewLeader');
  outer?.throwIfAborted();

  const watching = linkSignals(outer);
  const observing = onNewLeader
    ? (async () => {
        try {
          for await (const state of observeLeader(client, name, { signal: watching.signal }))
            call('onNewLeader', onNewLeader, state.leader?.value, state.leader);
        } catch (err) {
          log('runAsLeader: observing %s failed: %s', String(name), (err as Error)?.message);
        }
      })()
    : undefined;

  try {
    return await inFreshSessions(
      client,
      { ttl, signal: outer, what: `runAsLeader ${String(name)}`, log },
      async (session): Promise<RoundOutcome<T>> => {
        const election = new Election(session, name);
        try {
          await election.campaign(value, { signal: outer });
        } catch (err) {
          // The session was lost while we waited, or etcd is unreachable: a fresh session, after a pause.
          if (outer?.aborted || (!isRecipeError(err, 'SESSION_EXPIRED') && !isTransient(err))) throw err;
          log('runAsLeader: campaign for %s failed (%s); campaigning again', String(name), (err as Error)?.message);
          return { lost: true, reason: err };
        }
        const outcome = await term(election, session, task, outer, onElected);
        if (outcome.kind !== 'lost' || outcome.started) {
          call(
            'onDeposed',
            onDeposed,
            outcome.kind === 'lost'
              ? election.signal!.reason
              : outcome.kind === 'stopped'
                ? abortReason(outer!)
                : undefined,
          );
        }
        switch (outcome.kind) {
          case 'finished':
            return { lost: false, value: outcome.value };
          case 'threw':
            throw outcome.error;
          case 'stopped':
            throw abortReason(outer!);
          case 'lost':
            return { lost: true, reason: election.signal!.reason };
        }
      },
    );
  } finally {
    watching.abort();
    await observing;
  }
}

/** One term: run the task while leader, then resign unless the term was lost. */
async function term<T>(
  election: Election,
  session: Session,
  task: (signal: AbortSignal, ctx: LeaderContext) => Promise<T> | T,
  outer: AbortSignal | undefined,
  onElected: RunAsLeaderOptions['onElected'],
): Promise<Outcome<T>> {
  const leadership = election.signal!;
  // Lost between the election and now (our key deleted at once): do not start a task for it.
  if (leadership.aborted) return { kind: 'lost', started: false };
  const linked = linkSignals(leadership, outer);
  const revision = election.revision!;
  const ctx: LeaderContext = {
    signal: linked.signal,
    key: election.key,
    revision,
    fencingToken: revision,
    election,
    session,
    ifLeader: () => election.ifLeader(),
  };
  let outcome: Outcome<T>;
  try {
    call('onElected', onElected, ctx);
    try {
      outcome = { kind: 'finished', value: await task(linked.signal, ctx) };
    } catch (error) {
      outcome = { kind: 'threw', error };
    }
  } finally {
    linked.dispose();
  }
  if (outer?.aborted) outcome = { kind: 'stopped' };
  else if (leadership.aborted) outcome = { kind: 'lost', started: true };
  if (outcome.kind !== 'lost') await election.resign();
  log('runAsLeader: term %s of %s ended: %s', revision, election.key, outcome.kind);
  return outcome;
}
