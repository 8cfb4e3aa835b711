import { Arg, Args, ArgsType, Authorized, Ctx, Field, ID, Int, Mutation, Query, Resolver, Root, Subscription } from "type-graphql";
import { BACKUP_PROGRESS_TOPIC, type BackupProgress } from "../../backup/backup-progress";
import type { BackupStatus, BackupType } from "../../backup/manifest";
import { redisCall } from "../../redis/redis-client";
import { IsOptional, Max, Min } from "class-validator";
import { recoveryTargetFrom } from "../../restore/recovery-target";
import { ErrorCode, RelevoError } from "../../errors";
import type { ApiContext, ApiServices } from "../context";
import { FIELD_COSTS, pagedFieldCost } from "../limits";
import { perRequest } from "../request-memo";
import { toBackup } from "./backup.mapper";
import {
  Backup,
  BackupConnection,
  BackupProgressGql,
  BackupStatusGql,
  BackupTypeGql,
  ExpireResult,
  RecoveryWindowGql,
  RescanResult,
  RestoredCopy,
  RestoreInput,
} from "./backup.type";

@ArgsType()
class BackupsArgs {
  @Field(() => Int, { defaultValue: 20, description: "Page size, 1 to 200." })
  @Min(1)
  @Max(200)
  first!: number;

  @Field(() => String, { nullable: true, description: "endCursor of the previous page." })
  @IsOptional()
  after?: string | null;

  @Field(() => BackupTypeGql, { nullable: true }) @IsOptional() type?: BackupTypeGql | null;
  @Field(() => BackupStatusGql, { nullable: true }) @IsOptional() status?: BackupStatusGql | null;
  @Field(() => String, { nullable: true, description: "Started at or after (ISO 8601)." }) @IsOptional() since?: string | null;
  @Field(() => String, { nullable: true, description: "Started before (ISO 8601)." }) @IsOptional() until?: string | null;
}

@Resolver()
export class BackupResolver {
  constructor(private readonly services: ApiServices) {}

  @Authorized("viewer")
  @Query(() => BackupConnection, {
    description: "Backups in the repository, newest first.",
    complexity: pagedFieldCost({ sizeArgument: "first", defaultSize: 20, maxSize: 200, fixed: () => FIELD_COSTS.backupCatalog }),
  })
  async backups(@Args(() => BackupsArgs) args: BackupsArgs, @Ctx() context: ApiContext): Promise<BackupConnection> {
    const since = args.since ? Date.parse(args.since) : -Infinity;
    const until = args.until ? Date.parse(args.until) : Infinity;
    if (Number.isNaN(since) || Number.isNaN(until)) throw new RelevoError(ErrorCode.BadUserInput, "since / until must be ISO 8601 times");
    const type: BackupType | null | undefined = args.type;
    const status: BackupStatus | null | undefined = args.status;
    // Every alias of `backups` in a request filters the one listing of the repositories.
    const all = (await perRequest(context, "backup-list", () => this.services.backups.listCatalog()))
      .filter(({ summary: m }) => (!type || m.type === type) && (!status || m.status === status))
      .filter(({ summary: m }) => Date.parse(m.startedAt) >= since && Date.parse(m.startedAt) < until)
      .reverse();
    const start = args.after ? all.findIndex((entry) => entry.summary.id === args.after) + 1 : 0;
    const page = all.slice(start, start + args.first);
    return {
      edges: page.map(({ summary, copies }) => ({ cursor: summary.id, node: toBackup(summary, null, null, copies) })),
      pageInfo: { hasNextPage: start + args.first < all.length, endCursor: page[page.length - 1]?.summary.id ?? null },
      totalCount: all.length,
    };
  }

  @Authorized("viewer")
  @Query(() => Backup, {
    description: "One backup; NOT_FOUND when the repository has no such backup.",
    complexity: ({ childComplexity }) => 1 + FIELD_COSTS.oneBackup + childComplexity,
  })
  async backup(@Arg("id", () => ID) id: string, @Ctx() context: ApiContext): Promise<Backup> {
    return perRequest(context, `backup:${id}`, async () => {
      const manifest = await this.services.backups.get(id);
      const progress = await redisCall("reading backup progress", () => this.services.backups.progress(id));
      return toBackup(
        manifest,
        progress,
        manifest.status === "completed" ? await this.services.backups.chain(manifest).catch(() => null) : null,
        await this.services.backups.copiesOf(id),
      );
    });
  }

  @Authorized("viewer")
  @Subscription(() => BackupProgressGql, {
    topics: BACKUP_PROGRESS_TOPIC,
    filter: ({ payload, args }: { payload: BackupProgress; args: { id?: string | null } }) => !args.id || payload.id === args.id,
    description:
      "Progress of running backups (of one, with id): a few updates a second at most, and a last one with phase completed or failed.",
  })
  backupProgress(@Root() progress: BackupProgress, @Arg("id", () => ID, { nullable: true }) _id?: string): BackupProgressGql {
    return progress;
  }

  @Authorized("operator")
  @Mutation(() => Backup, {
    description:
      "Starts a backup and returns it as soon as it has started (status RUNNING); follow it with backup(id) or backupEvents. BACKUP_IN_PROGRESS while another runs. DIFFERENTIAL stores the blocks changed since the newest full, INCREMENTAL those since the newest backup of any type; either is taken as a FULL (promotedToFull says why) when there is nothing to build on.",
  })
  async createBackup(
    @Arg("type", () => BackupTypeGql) type: BackupTypeGql,
    @Arg("repository", () => Int, {
      nullable: true,
      description:
        "Writes the backup to this repository alone (its number, RELEVO_REPO<n>_), whatever RELEVO_BACKUP_REPO says; NOT_FOUND when it is not configured.",
    })
    repository?: number | null,
  ): Promise<Backup> {
    const { manifest } = await this.services.backups.start(type, { repository });
    return toBackup(manifest, null, null, await this.services.backups.copiesOf(manifest.id));
  }

  @Authorized("viewer")
  @Query(() => RecoveryWindowGql, {
    name: "recoveryWindow",
    description: "The span a point-in-time restore can reach, and any gap in the archive: of one repository, or of them together.",
    complexity: ({ childComplexity }) => 1 + FIELD_COSTS.recoveryWindow + childComplexity,
  })
  async recoveryWindow(
    @Ctx() context: ApiContext,
    @Arg("repository", () => Int, {
      nullable: true,
      description:
        "One repository's window and gaps (its number); by default the repositories' together: what some repository can restore.",
    })
    repository?: number | null,
  ): Promise<RecoveryWindowGql> {
    const window = await perRequest(context, `recovery-window:${repository ?? "all"}`, () =>
      this.services.backups.recoveryWindow({ repository: repository ?? undefined }),
    );
    return { repository: repository ?? null, earliest: window.earliest, latest: window.latest, gaps: [...window.gaps] };
  }

  @Authorized("operator")
  @Mutation(() => RescanResult, { description: "Rebuilds the catalog (table backups) from the repository's manifests." })
  async rescanRepository(): Promise<RescanResult> {
    return { backups: await this.services.backups.rescan() };
  }

  @Authorized("operator")
  @Mutation(() => ExpireResult, {
    description:
      "Applies retention now (it also runs after every backup): RELEVO_RETENTION_FULL full backups are kept with their dependents.",
  })
  async expireBackups(): Promise<ExpireResult> {
    return this.services.backups.expire();
  }

  @Authorized("operator")
  @Mutation(() => Backup, {
    description:
      "Re-reads every stored file against the manifest's checksums; with restoreTest, also restores the backup into a scratch node (to its reference point), starts it, runs pg_amcheck, compares every table's checksum with the reference point's and removes it. Waits for the result; a verification, restore or expiry of the same backup running meanwhile finishes first (PRECONDITION_FAILED if it expired the backup).",
  })
  async verifyBackup(
    @Arg("id", () => ID) id: string,
    @Arg("restoreTest", () => Boolean, { defaultValue: false }) restoreTest: boolean,
  ): Promise<Backup> {
    return toBackup(await this.services.backups.verify(id, { restoreTest }));
  }

  @Authorized("operator")
  @Mutation(() => RestoredCopy, {
    description:
      "Restores a backup into a new standalone copy on this machine (never connected to the cluster), replays WAL to the target, promotes it and leaves it running.",
  })
  async restoreBackup(@Arg("input", () => RestoreInput) input: RestoreInput): Promise<RestoredCopy> {
    if (this.services.nodes.some((node) => node.name === input.name)) {
      throw new RelevoError(ErrorCode.BadUserInput, `${input.name} is a node of the cluster; choose another name for the copy`);
    }
    const recoveryTarget = recoveryTargetFrom({ time: input.time, lsn: input.lsn, name: input.restorePoint, immediate: input.immediate });
    const target = { name: input.name, host: this.services.nodes[0]!.host, port: input.port };
    const restored = await this.services.backups.restore({ backupId: input.backupId ?? undefined, target, recoveryTarget });
    return {
      name: target.name,
      host: target.host,
      port: target.port,
      backup: toBackup(restored.manifest),
      repository: restored.repository,
    };
  }
}
