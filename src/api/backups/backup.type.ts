import { Field, Float, ID, InputType, Int, ObjectType, registerEnumType } from "type-graphql";
import { IsOptional, Matches, Max, Min } from "class-validator";

export enum BackupTypeGql {
  FULL = "full",
  DIFFERENTIAL = "differential",
  INCREMENTAL = "incremental",
}
registerEnumType(BackupTypeGql, {
  name: "BackupType",
  description: "FULL: every file. DIFFERENTIAL: changes since the last full. INCREMENTAL: changes since the last backup of any type.",
});

export enum BackupStatusGql {
  RUNNING = "running",
  COMPLETED = "completed",
  FAILED = "failed",
  EXPIRED = "expired",
}
registerEnumType(BackupStatusGql, { name: "BackupStatus" });

export enum BackupCopyStatusGql {
  COMPLETED = "completed",
  COPYING = "copying",
  FAILED = "failed",
  ABSENT = "absent",
  UNKNOWN = "unknown",
}
registerEnumType(BackupCopyStatusGql, {
  name: "BackupCopyStatus",
  description:
    "COMPLETED: the repository holds the backup, its manifest published. COPYING: being written there (the backup, or its copy). FAILED: the copy failed (retried after the next backup). ABSENT: not there, or expired there. UNKNOWN: the repository cannot be read now (error says why).",
});

@ObjectType({ description: "A backup's copy in one repository, as that repository's manifest says." })
export class BackupCopy {
  @Field(() => Int, { description: "The repository's number (RELEVO_REPO<n>_)." }) repository!: number;
  @Field(() => BackupCopyStatusGql) status!: BackupCopyStatusGql;
  @Field(() => Float, { nullable: true, description: "Bytes the copy holds there (completed only)." }) storedBytes!: number | null;
  @Field(() => String, { nullable: true, description: "Why the copy failed (failed), or why the repository cannot be read (unknown)." })
  error!: string | null;
}

@ObjectType({ description: "A backup this one builds on." })
export class BackupReference {
  @Field(() => ID) id!: string;
}

@ObjectType({ description: "One backup of a chain (what a restore of a differential or incremental reads), and what it stored." })
export class BackupChainLink {
  @Field(() => ID) id!: string;
  @Field(() => BackupTypeGql) type!: BackupTypeGql;
  @Field({ description: "ISO 8601." }) startedAt!: string;
  @Field(() => Int, { description: "Files stored whole." }) filesStored!: number;
  @Field(() => Float, { description: "8 KiB blocks stored by block-level entries (0 for a full)." }) blocksStored!: number;
  @Field(() => Float, { description: "Bytes stored in the repository (compressed)." }) storedBytes!: number;
}

@ObjectType("BackupProgress", { description: "Live progress of a backup." })
export class BackupProgressGql {
  @Field(() => ID) id!: string;
  @Field({ description: "copying, waiting-for-wal, completed or failed." }) phase!: string;
  @Field(() => Int) filesDone!: number;
  @Field(() => Int) filesTotal!: number;
  @Field(() => Float) bytesDone!: number;
  @Field(() => Float) bytesTotal!: number;
  @Field(() => Float, {
    description:
      "Bytes put into the repository so far, in their stored form (compressed, encrypted): an upload's progress, before its file is whole.",
  })
  bytesStored!: number;
  @Field(() => Float) bytesPerSecond!: number;
  @Field(() => Int, { nullable: true }) etaSeconds!: number | null;
  @Field({ description: "ISO 8601." }) updatedAt!: string;
}

@ObjectType({ description: "A backup, as its manifest in the repository describes it." })
export class Backup {
  @Field(() => ID) id!: string;
  @Field(() => BackupTypeGql) type!: BackupTypeGql;
  @Field(() => BackupStatusGql) status!: BackupStatusGql;
  @Field({ description: "ISO 8601." }) startedAt!: string;
  @Field(() => String, { nullable: true, description: "ISO 8601." }) finishedAt!: string | null;
  @Field(() => Float, { nullable: true, description: "Bytes of the files copied." }) sizeBytes!: number | null;
  @Field(() => Float, { nullable: true, description: "Bytes stored in the repository (compressed)." }) storedBytes!: number | null;
  @Field(() => Int, { nullable: true }) fileCount!: number | null;
  @Field(() => Int, { nullable: true }) timeline!: number | null;
  @Field(() => String, { nullable: true, description: "Redo LSN of the backup's checkpoint: replay starts here." }) startLsn!:
    string | null;
  @Field(() => String, { nullable: true }) stopLsn!: string | null;
  @Field(() => BackupReference, { nullable: true }) reference!: BackupReference | null;
  @Field(() => Int, { nullable: true, description: "Files stored whole." }) filesStored!: number | null;
  @Field(() => Float, { nullable: true, description: "8 KiB blocks stored by block-level entries (differential, incremental)." })
  blocksStored!: number | null;
  @Field(() => String, {
    nullable: true,
    description:
      "How a differential or incremental found its changed blocks: wal (the block references of the WAL since its reference's start) or page-scan (that WAL was not readable).",
  })
  changesFrom!: string | null;
  @Field(() => String, { nullable: true, description: "Why a backup asked for as DIFFERENTIAL or INCREMENTAL was taken as a FULL." })
  promotedToFull!: string | null;
  @Field(() => [BackupChainLink], {
    nullable: true,
    description: "The backups a restore of this one reads, the full first, this one last (backup(id) only; null in lists).",
  })
  chain!: BackupChainLink[] | null;
  @Field(() => String, { nullable: true, description: "The node it was taken from." }) source!: string | null;
  @Field(() => String, { nullable: true, description: "Why it failed." }) error!: string | null;
  @Field(() => BackupVerification, { nullable: true }) verification!: BackupVerification | null;
  @Field(() => ReferencePointGql, {
    nullable: true,
    description: "What the restore test compares with; null until recorded, or when it could not be taken.",
  })
  referencePoint!: ReferencePointGql | null;
  @Field(() => String, {
    nullable: true,
    description: "When a restore test last proved this backup restorable (ISO 8601); null if never, or if the latest verification failed.",
  })
  provenRestorableAt!: string | null;
  @Field(() => BackupProgressGql, { nullable: true, description: "Live progress (backup(id) only; null in lists)." })
  progress!: BackupProgressGql | null;

  @Field(() => [BackupCopy], {
    description:
      "The backup in each configured repository, lowest number first: taken into one, then copied to the others (RELEVO_BACKUP_REPO=all); the backup is COMPLETED once its first copy is.",
  })
  copies!: BackupCopy[];
}

@ObjectType({
  description:
    "A restore test: the backup restored into a scratch node (to its reference point when it has one or one can be taken on a replica), started, checked with pg_amcheck and every table's checksum compared with the reference point's, removed.",
})
export class RestoreTestResult {
  @Field() ok!: boolean;
  @Field(() => Int) durationMs!: number;
  @Field(() => String, { nullable: true }) error!: string | null;
  @Field(() => Int, { description: "Tables compared with the reference point (0: the backup has none; pg_amcheck only)." })
  tablesCompared!: number;
  @Field(() => String, {
    nullable: true,
    description:
      "Why no reference point was compared (pg_amcheck only): e.g. no replica other than the only failover candidate. Null when one was.",
  })
  referenceMissing!: string | null;
}

@ObjectType({
  description:
    "The point a restore test restores to, with every table's checksum at that point: taken by the first restore test, on a replica whose replay was paused for a moment (older backups: a restore point taken on the primary right after the backup).",
})
export class ReferencePointGql {
  @Field({ description: "relevo-<backup id>: the restore point marking it in the WAL." }) name!: string;
  @Field({
    description: "Where recovery stops: before the record starting here (a replica's), or at the named restore point (older backups).",
  })
  lsn!: string;
  @Field(() => String, {
    nullable: true,
    description: "The replica paused to take it; null for a reference taken on the primary (older backups).",
  })
  takenOn!: string | null;
  @Field({ description: "ISO 8601." }) createdAt!: string;
  @Field(() => Int, { description: "Tables with a recorded checksum." }) tables!: number;
}

@ObjectType({ description: "The latest verification of a backup." })
export class BackupVerification {
  @Field({ description: "ISO 8601." }) checkedAt!: string;
  @Field({ description: "Every stored file matched its checksums." }) contentOk!: boolean;
  @Field(() => [String], { description: "Files whose stored content is missing or damaged." }) badFiles!: string[];
  @Field(() => RestoreTestResult, { nullable: true }) restoreTest!: RestoreTestResult | null;
}

@ObjectType()
export class BackupEdge {
  @Field() cursor!: string;
  @Field(() => Backup) node!: Backup;
}

@ObjectType()
export class BackupPageInfo {
  @Field() hasNextPage!: boolean;
  @Field(() => String, { nullable: true }) endCursor!: string | null;
}

@ObjectType({ description: "Backups, newest first (Relay connection)." })
export class BackupConnection {
  @Field(() => [BackupEdge]) edges!: BackupEdge[];
  @Field(() => BackupPageInfo) pageInfo!: BackupPageInfo;
  @Field(() => Int) totalCount!: number;
}

@InputType({
  description: "Where to restore and how far to replay. At most one of time, lsn, name, immediate; none means the end of the archive.",
})
export class RestoreInput {
  @Field(() => ID, { nullable: true, description: "The backup; default: the newest completed one." })
  @IsOptional()
  backupId?: string | null;

  @Field({ description: "Name of the restored copy (a new node, not part of the cluster)." })
  @Matches(/^[a-z][a-z0-9-]{0,39}$/, { message: "name: lower-case letters, digits and '-'" })
  name!: string;

  @Field(() => Int, { description: "Port the restored copy listens on." })
  @Min(1024)
  @Max(65535)
  port!: number;

  @Field(() => String, { nullable: true, description: "Recover to this time (ISO 8601)." })
  @IsOptional()
  time?: string | null;

  @Field(() => String, { nullable: true, description: "Recover to this LSN." })
  @IsOptional()
  lsn?: string | null;

  @Field(() => String, {
    nullable: true,
    description:
      "Recover to this named restore point (pg_create_restore_point): no control character nor backslash, at most 63 bytes (BAD_USER_INPUT otherwise).",
  })
  @IsOptional()
  restorePoint?: string | null;

  @Field(() => Boolean, { nullable: true, description: "Stop as soon as the backup is consistent." })
  @IsOptional()
  immediate?: boolean | null;
}

@ObjectType({ description: "A restored copy, started and promoted, left running." })
export class RestoredCopy {
  @Field() name!: string;
  @Field() host!: string;
  @Field(() => Int) port!: number;
  @Field(() => Backup) backup!: Backup;
  @Field(() => Int, {
    description: "The repository (its number) the backup was read from: the first whose copy restored (see docs/repositories.md).",
  })
  repository!: number;
}

@ObjectType({ description: "A point in the recoverable window." })
export class WindowPoint {
  @Field({ description: "ISO 8601." }) time!: string;
  @Field() lsn!: string;
  @Field(() => Int) timeline!: number;
}

@ObjectType({ description: "Missing WAL: recovery cannot cross it." })
export class ArchiveGap {
  @Field(() => Int) timeline!: number;
  @Field({ description: "First missing segment." }) from!: string;
  @Field({ description: "Last missing segment." }) to!: string;
}

@ObjectType("RecoveryWindow", {
  description: "What a restore can reach: from the oldest completed backup's end to the end of the archived WAL.",
})
export class RecoveryWindowGql {
  @Field(() => Int, { nullable: true, description: "The repository it is of; null: the repositories together." })
  repository!: number | null;
  @Field(() => WindowPoint, { nullable: true }) earliest!: WindowPoint | null;
  @Field(() => WindowPoint, { nullable: true }) latest!: WindowPoint | null;
  @Field(() => [ArchiveGap]) gaps!: ArchiveGap[];
}

@ObjectType()
export class ExpireResult {
  @Field(() => [ID], { description: "Backups expired now." }) expired!: string[];
  @Field(() => Int) walSegmentsRemoved!: number;
}

@ObjectType()
export class RescanResult {
  @Field(() => Int, { description: "Manifests read from the repository and sent to the catalog." }) backups!: number;
}
