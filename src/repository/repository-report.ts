import type { RepositorySettings } from "../config/repository-config";
import { retentionOf } from "../config/repository-config";
import type { Logger } from "../log";
import type { Repository } from "../storage/repository";
import type { PushHealth } from "../wal/push-health";

/** A repository as the `repositories` query shows it: where, how, what it holds and how its WAL keeps up; never a credential. */
export interface RepositoryReport {
  readonly index: number;
  readonly type: "dir" | "s3";
  /** Its directory, or `s3://<bucket>/<prefix>`. */
  readonly location: string;
  /** An S3 repository's endpoint (null: AWS's for the region; a directory has none). */
  readonly endpoint: string | null;
  readonly encrypted: boolean;
  /** Whether the service writes to it: every configured repository is opened and written (false: a report built without it). */
  readonly inUse: boolean;
  readonly retentionFull: number;
  readonly retentionDays: number | null;
  /** The generation read and written (repository.json); null when not in use. */
  readonly generation: number | null;
  /** Completed backups in it; null when not in use. */
  readonly backups: number | null;
  /** The bytes of every object it holds, as last measured (a listing, at most every 5 minutes); null before the first. */
  readonly storedBytes: number | null;
  readonly storedBytesMeasuredAt: string | null;
  /** WAL received and not in it yet, in files (segments and histories), after the pusher's last pass; null when not in use. */
  readonly walPendingFiles: number | null;
  readonly lastPushAt: string | null;
  /** Since when WAL has failed to reach it; null while it does. */
  readonly failingSince: string | null;
  /** Why WAL does not reach it, or why it could not be read for this answer (the counts are then the last known); null: neither. */
  readonly lastError: string | null;
}

/** How long a measure of the stored bytes is shown before it is taken again (a listing of the whole repository). */
const STORED_BYTES_TTL_MS = 5 * 60_000;

/** What is known of one repository in use between answers: its last counts, and the listings under way. */
class RepositoryFacts {
  measured: { readonly bytes: number; readonly at: number } | null = null;
  measuring: Promise<void> | null = null;
  /** Completed backups as last counted: shown while the repository cannot be read (it is then that operators ask). */
  lastBackups: number | null = null;
  /** The count in progress: concurrent queries share one listing of the manifests. */
  counting: Promise<string | null> | null = null;

  constructor(
    readonly repository: Repository,
    readonly pushHealth: Pick<PushHealth, "status">,
  ) {}
}

/**
 * The configured repositories for the API: each one's settings, and for
 * each one in use what it holds and how its pushes fare (the latter from
 * Redis, so any instance answers alike).
 */
export class RepositoryReporter {
  private readonly facts = new Map<number, RepositoryFacts>();

  constructor(
    private readonly options: {
      readonly settings: readonly RepositorySettings[];
      readonly clusterKeepFull: number;
      /** The repositories the service opened, by number, each with its pusher's health (read at each answer: one may join). */
      readonly inUse: () => readonly {
        readonly index: number;
        readonly repository: Repository;
        readonly pushHealth: Pick<PushHealth, "status">;
      }[];
      /** Those configured and not opened yet (their stores did not answer at the start), with why. */
      readonly pending?: () => readonly { readonly index: number; readonly error: string; readonly since: string }[];
      readonly logger: Logger;
    },
  ) {}

  async list(): Promise<RepositoryReport[]> {
    return Promise.all(this.options.settings.map((settings) => this.report(settings)));
  }

  private async report(settings: RepositorySettings): Promise<RepositoryReport> {
    const retention = retentionOf(settings, this.options.clusterKeepFull);
    const common = {
      index: settings.index,
      type: settings.type,
      location: settings.type === "dir" ? settings.path : `s3://${settings.bucket}/${settings.prefix}`,
      endpoint: settings.type === "s3" && settings.endpoint !== "" ? settings.endpoint : null,
      encrypted: settings.cipherPass !== "",
      retentionFull: retention.keepFull,
      retentionDays: retention.keepDays,
    };
    const facts = this.factsOf(settings.index);
    if (!facts) {
      const pending = this.options.pending?.().find((each) => each.index === settings.index);
      return {
        ...common,
        inUse: false,
        generation: null,
        backups: null,
        storedBytes: null,
        storedBytesMeasuredAt: null,
        walPendingFiles: null,
        lastPushAt: null,
        failingSince: pending?.since ?? null,
        lastError: pending ? `not opened: ${pending.error}` : null,
      };
    }
    const [readError, push] = await Promise.all([this.countBackups(facts), facts.pushHealth.status(), this.measureIfStale(facts)]);
    return {
      ...common,
      inUse: true,
      generation: facts.repository.generation,
      backups: facts.lastBackups,
      storedBytes: facts.measured?.bytes ?? null,
      storedBytesMeasuredAt: facts.measured ? new Date(facts.measured.at).toISOString() : null,
      walPendingFiles: push.pendingFiles,
      lastPushAt: push.lastPushAt,
      failingSince: push.failingSince,
      lastError: push.lastError ?? readError,
    };
  }

  /** What is known of repository `index` while it is in use (made when it is first reported); null while it is not. */
  private factsOf(index: number): RepositoryFacts | null {
    const known = this.facts.get(index);
    if (known) return known;
    const member = this.options.inUse().find((each) => each.index === index);
    if (!member) return null;
    const made = new RepositoryFacts(member.repository, member.pushHealth);
    this.facts.set(index, made);
    return made;
  }

  /**
   * Counts the completed backups (kept for the next answer); the error's
   * message when the repository cannot be read. Queries at the same time
   * share one count.
   */
  private countBackups(facts: RepositoryFacts): Promise<string | null> {
    facts.counting ??= (async () => {
      try {
        const summaries = await facts.repository.listManifestSummaries();
        facts.lastBackups = summaries.filter((summary) => summary.status === "completed").length;
        return null;
      } catch (error) {
        return (error as Error).message;
      }
    })().finally(() => (facts.counting = null));
    return facts.counting;
  }

  /**
   * Measures the stored bytes when never measured (the caller waits) or
   * when the measure is stale (measured again behind the answer). A
   * listing that fails keeps the last measure and is logged.
   */
  private async measureIfStale(facts: RepositoryFacts): Promise<void> {
    if (facts.measured && Date.now() - facts.measured.at < STORED_BYTES_TTL_MS) return;
    facts.measuring ??= (async () => {
      let bytes = 0;
      for await (const info of facts.repository.objects.store.list("")) bytes += info.size;
      facts.measured = { bytes, at: Date.now() };
    })()
      .catch((error: Error) =>
        this.options.logger.warn(
          { err: error.message, repository: facts.repository.location },
          "the repository's stored bytes not measured",
        ),
      )
      .finally(() => (facts.measuring = null));
    if (!facts.measured) await facts.measuring;
  }
}
