import type { Namespace } from 'etcd3';
import { joinKey, showKey } from '../core/keys.js';
import type { KeyValue } from '../core/kv.js';
import { checkInspectArgs, describeKey, SnapshotReader, type InspectedKey, type InspectOptions } from './read.js';

/** A job of a {@link WorkQueue}, as {@link inspectWorkQueue} reports it. */
export interface InspectedJob {
  /** The job's ID, `<%05d priority>-<19 digits>`. */
  readonly id: string;
  /** The job's key, `<prefix>/jobs/<id>`. */
  readonly key: string;
  /** Its priority (lower first), from the ID. */
  readonly priority: number;
  /**
   * Its value as UTF-8; `undefined` for a claimed job outside the first
   * `limit` jobs (its value was not read).
   */
  readonly value: string | undefined;
  /** The revision it was added at. */
  readonly createRevision: bigint;
  /** How many revisions ago it was added. */
  readonly ageRevisions: bigint;
  /** How many times it has been claimed so far (0: never). */
  readonly attempts: number;
}

/** A claimed job: the job and who holds it. */
export interface ClaimedJob extends InspectedJob {
  /**
   * The claim key `<prefix>/claims/<id>`: its lease is the claimer's session
   * (the claim vanishes with it), its create revision the claim's fencing token.
   */
  readonly claim: InspectedKey;
}

/** A dead-lettered job. */
export interface InspectedDeadJob {
  /** The job's ID. */
  readonly id: string;
  /** `<prefix>/dead/<id>`. */
  readonly key: string;
  /** Its priority (lower first). */
  readonly priority: number;
  /** Its value, as UTF-8. */
  readonly value: string;
  /** The revision it was dead-lettered at. */
  readonly createRevision: bigint;
}

/** What {@link inspectWorkQueue} reports. */
export interface WorkQueueInspection {
  /** The work queue's prefix, as given. */
  readonly name: string;
  /** The store revision the keys were read at. */
  readonly revision: bigint;
  /** Jobs nobody holds, in claim order (priority, then age); at most `limit`. */
  readonly pending: InspectedJob[];
  /** Jobs being worked on, in claim order (at most `limit`). */
  readonly claimed: ClaimedJob[];
  /** Dead letters, by ID (at most `limit`). */
  readonly dead: InspectedDeadJob[];
  /** Claimers waiting for a job (their waiter keys, first in line first; at most `limit`). */
  readonly waiting: InspectedKey[];
  /** Exact totals, even past the limit. */
  readonly counts: {
    /** Jobs in the queue, claimed or not. */
    readonly jobs: number;
    /** Jobs nobody has claimed. */
    readonly pending: number;
    /** Jobs a claimer holds. */
    readonly claimed: number;
    /** Dead-lettered jobs. */
    readonly dead: number;
    /** Claimers waiting for a job. */
    readonly waiting: number;
  };
  /** True if some list was cut by `options.limit`. */
  readonly truncated: boolean;
}

const priorityOf = (id: string) => Number(id.slice(0, 5));

/**
 * The pending, claimed (with the claimer's lease and attempt count) and
 * dead jobs of a {@link WorkQueue}, and its waiting claimers. Read-only.
 * @param prefix - the work queue's prefix (`new WorkQueue(session, prefix)`)
 * @throws InvalidArgumentError for a bad client, prefix or options
 */
export async function inspectWorkQueue(
  client: Namespace,
  prefix: string | Buffer,
  options: InspectOptions = {},
): Promise<WorkQueueInspection> {
  const limit = checkInspectArgs(client, prefix, options, 'prefix');
  const reader = new SnapshotReader(client, options.signal);
  const dir = (name: string) => joinKey(prefix, '/', name, '/');
  const dirs = { jobs: dir('jobs'), claims: dir('claims'), attempts: dir('attempts'), dead: dir('dead') };
  const byKey = { sortTarget: 'Key', sortOrder: 'Ascend' } as const;
  const jobs = await reader.list(dirs.jobs, limit, byKey);
  const claims = await reader.list(dirs.claims, limit, { ...byKey, keysOnly: true });
  // Attempt counters only exist for jobs claimed at least once; keys only (the count is the version).
  const attempts = await reader.list(dirs.attempts, 100_000, { ...byKey, keysOnly: true });
  const dead = await reader.list(dirs.dead, limit, byKey);
  const waiters = await reader.list(dir('waiters'), limit, { keysOnly: true });
  const revision = reader.revision;
  const idIn = (dir: Buffer, kv: KeyValue) => kv.key.subarray(dir.length).toString();
  const attemptsOf = new Map(attempts.kvs.map((kv) => [idIn(dirs.attempts, kv), Number(kv.version)]));
  const jobOf = new Map(jobs.kvs.map((kv) => [idIn(dirs.jobs, kv), kv]));
  const ttls = await reader.leaseTtls([...claims.kvs, ...waiters.kvs].map((kv) => kv.lease));

  const job = (id: string, kv: KeyValue | undefined): InspectedJob => ({
    id,
    key: showKey(joinKey(dirs.jobs, id)),
    priority: priorityOf(id),
    value: kv?.value.toString(),
    createRevision: kv?.createRevision ?? 0n,
    ageRevisions: kv ? revision - kv.createRevision : 0n,
    attempts: attemptsOf.get(id) ?? 0,
  });
  const claimedIds = new Set<string>();
  const claimed: ClaimedJob[] = claims.kvs.map((c) => {
    const id = idIn(dirs.claims, c);
    claimedIds.add(id);
    return { ...job(id, jobOf.get(id)), claim: describeKey(c, ttls) };
  });
  const pending = jobs.kvs
    .map((kv) => idIn(dirs.jobs, kv))
    .filter((id) => !claimedIds.has(id))
    .map((id) => job(id, jobOf.get(id)));
  return {
    name: showKey(prefix),
    revision,
    pending,
    claimed,
    dead: dead.kvs.map((kv) => {
      const id = idIn(dirs.dead, kv);
      return {
        id,
        key: showKey(kv.key),
        priority: priorityOf(id),
        value: kv.value.toString(),
        createRevision: kv.createRevision,
      };
    }),
    waiting: waiters.kvs.map((kv) => describeKey(kv, ttls)),
    counts: {
      jobs: jobs.total,
      pending: jobs.total - claims.total,
      claimed: claims.total,
      dead: dead.total,
      waiting: waiters.total,
    },
    truncated: jobs.truncated || claims.truncated || dead.truncated || waiters.truncated,
  };
}
