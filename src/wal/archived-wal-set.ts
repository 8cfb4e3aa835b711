import { ErrorCode, RelevoError } from "../errors";
import type { ArchivedWal } from "./archived-wal";

/** What the archiver and failover ask of the WAL archive: ArchivedWal's reads and its two writes. */
export type ArchivedWalView = Pick<ArchivedWal, "names" | "read" | "readHistory" | "readStart" | "addHistory" | "setAside">;

/**
 * The WAL archive of several repositories as one, for the decisions taken
 * over "the cluster's WAL" (where pg_receivewal resumes, which files are
 * off the primary's history, which timelines a promotion must not reuse):
 * a name is the cluster's when any repository (or the spool they share)
 * has it, so one repository behind or emptied never makes the archive
 * resume before the others' end or forget a branch. Writes go to every
 * repository: a history added, a diverged file set aside in each (a
 * restore from any must not replay an abandoned branch).
 *
 * `members` lowest-numbered first: a read takes the first that has the
 * file. Over one repository it is that repository's ArchivedWal.
 */
export class ArchivedWalSet implements ArchivedWalView {
  /**
   * Set-asides a repository missed (its store down): finished by settle
   * before anything else is pushed into it (see owes), so a restore from it
   * never replays an abandoned branch.
   */
  private readonly owed = new Map<ArchivedWalView, Array<{ readonly names: readonly string[]; readonly folder: readonly string[] }>>();

  constructor(private readonly members: () => readonly ArchivedWalView[]) {}

  /**
   * Every name some repository or the spool holds, sorted. A repository
   * that cannot be listed is left out while another answers (its names
   * are a part of the others' or a later push's; one store down must not
   * stop receiving for all); all failing is the first's error.
   */
  async names(): Promise<string[]> {
    const outcomes = await Promise.allSettled(this.list().map((member) => member.names()));
    const answered = outcomes.filter((outcome) => outcome.status === "fulfilled").map((outcome) => outcome.value);
    if (answered.length === 0) throw (outcomes[0] as PromiseRejectedResult).reason;
    return [...new Set(answered.flat())].sort();
  }

  async read(name: string): Promise<Buffer | null> {
    return this.first((member) => member.read(name));
  }

  async readHistory(timeline: number): Promise<string | null> {
    return this.first((member) => member.readHistory(timeline));
  }

  async readStart(name: string, bytes: number): Promise<Buffer | null> {
    return this.first((member) => member.readStart(name, bytes));
  }

  /** Added to every repository that lacks it: "added" when any did. */
  async addHistory(timeline: number, content: string): Promise<"added" | "present"> {
    let outcome: "added" | "present" = "present";
    for (const member of this.list()) if ((await member.addHistory(timeline, content)) === "added") outcome = "added";
    return outcome;
  }

  /**
   * Set aside in every repository, the lowest-numbered last: each moves
   * its own objects under diverged/ (a copy of the spool's file too while
   * the spool still has it: the first to run takes the spool's file, so a
   * repository that never got a file gets no copy of it), and the spool's
   * file goes once a repository holds the copy. Run again with the same
   * folder it finishes what is left in each, as ArchivedWal's does (a
   * failover resumed). A repository whose store fails is owed the
   * set-aside (see owes, settle) while another did it; all failing is the
   * error.
   */
  async setAside(names: readonly string[], folder: readonly string[]): Promise<{ readonly path: string; readonly moved: string[] }> {
    const paths: string[] = [];
    const moved = new Set<string>();
    const failures: Array<{ readonly member: ArchivedWalView; readonly error: Error }> = [];
    const members = [...this.list()].reverse();
    for (const member of members) {
      try {
        const aside = await member.setAside(names, folder);
        paths.unshift(aside.path);
        for (const name of aside.moved) moved.add(name);
      } catch (error) {
        failures.push({ member, error: error as Error });
      }
    }
    if (failures.length === members.length) throw failures[0]!.error;
    for (const { member } of failures) this.owed.set(member, [...(this.owed.get(member) ?? []), { names, folder }]);
    return { path: paths.join("; "), moved: [...moved].sort() };
  }

  /** Whether `member` still owes a set-aside: nothing may be pushed into it until settle has done it. */
  owes(member: ArchivedWalView): boolean {
    return (this.owed.get(member)?.length ?? 0) > 0;
  }

  /**
   * Finishes the set-asides owed, each repository as far as its store
   * answers (what fails stays owed, tried again at the next call). Returns
   * the first failure, if any.
   */
  async settle(): Promise<Error | null> {
    let failure: Error | null = null;
    for (const [member, debts] of [...this.owed]) {
      try {
        while (debts.length > 0) {
          await member.setAside(debts[0]!.names, debts[0]!.folder);
          debts.shift();
        }
        this.owed.delete(member);
      } catch (error) {
        failure ??= error as Error;
      }
    }
    return failure;
  }

  private list(): readonly ArchivedWalView[] {
    const members = this.members();
    if (members.length === 0) throw new RelevoError(ErrorCode.Internal, "a WAL archive over no repository");
    return members;
  }

  /** The first repository's answer that is not null; one that fails is passed over, its error thrown when none had it. */
  private async first<T>(read: (member: ArchivedWalView) => Promise<T | null>): Promise<T | null> {
    let failure: Error | null = null;
    for (const member of this.list()) {
      try {
        const found = await read(member);
        if (found !== null) return found;
      } catch (error) {
        failure ??= error as Error;
      }
    }
    if (failure !== null) throw failure;
    return null;
  }
}
