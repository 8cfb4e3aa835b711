import { Authorized, Field, Float, Int, ObjectType, Query, Resolver } from "type-graphql";
import type { ApiServices } from "../context";

@ObjectType("Repository", { description: "A backup repository as configured (RELEVO_REPO<n>_…): never a credential or a cipher pass." })
export class RepositoryGql {
  @Field(() => Int, { description: "Its number n (RELEVO_REPO<n>_…)." }) index!: number;
  @Field({ description: "dir or s3." }) type!: string;
  @Field({ description: "Its directory, or s3://<bucket>/<prefix>." }) location!: string;
  @Field(() => String, { nullable: true, description: "An S3 repository's endpoint; null: AWS's for the region, or a directory." })
  endpoint!: string | null;
  @Field() encrypted!: boolean;
  @Field({ description: "Whether the service writes to it: every configured repository is opened, the WAL archive pushed to each." })
  inUse!: boolean;
  @Field(() => Int, { description: "Full backups kept." }) retentionFull!: number;
  @Field(() => Int, { nullable: true, description: "Whatever restores to any point of the last N days is kept; null: no time rule." })
  retentionDays!: number | null;
  @Field(() => Int, { nullable: true, description: "The generation read and written (a cluster started over); null when not in use." })
  generation!: number | null;
  @Field(() => Int, {
    nullable: true,
    description: "Completed backups in it (the last count while it cannot be read); null when not in use.",
  })
  backups!: number | null;
  @Field(() => Float, {
    nullable: true,
    description: "The bytes of every object it holds, as last measured (a listing, at most every 5 minutes); null before the first.",
  })
  storedBytes!: number | null;
  @Field(() => String, { nullable: true, description: "When storedBytes was measured (ISO 8601)." }) storedBytesMeasuredAt!: string | null;
  @Field(() => Int, {
    nullable: true,
    description:
      "WAL received and not in it yet, in files (segments and histories), after the pusher's last pass: its lag behind the archive.",
  })
  walPendingFiles!: number | null;
  @Field(() => String, { nullable: true, description: "When WAL was last put into it (ISO 8601)." }) lastPushAt!: string | null;
  @Field(() => String, { nullable: true, description: "Since when WAL has failed to reach it (ISO 8601); null while it does." })
  failingSince!: string | null;
  @Field(() => String, {
    nullable: true,
    description:
      "Why WAL does not reach it, or why it could not be read for this answer (backups and storedBytes are then the last known).",
  })
  lastError!: string | null;
}

@Resolver()
export class RepositoryResolver {
  constructor(private readonly services: ApiServices) {}

  @Authorized("viewer")
  @Query(() => [RepositoryGql], { description: "The backup repositories, by number: where, what they hold, how their WAL keeps up." })
  async repositories(): Promise<RepositoryGql[]> {
    return this.services.repositories.list();
  }
}
