import { Field, Float, ID, Int, ObjectType, registerEnumType } from "type-graphql";

export enum FailoverKindGql {
  FAILOVER = "failover",
  SWITCHOVER = "switchover",
  FAILBACK = "failback",
}
registerEnumType(FailoverKindGql, {
  name: "FailoverKind",
  description:
    "FAILOVER: the primary was fenced and a replica promoted. SWITCHOVER: a planned change of primary, losing nothing. FAILBACK: a switchover back to RELEVO_PREFERRED_PRIMARY.",
});

export enum FailoverTriggerGql {
  AUTOMATIC = "automatic",
  MANUAL = "manual",
}
registerEnumType(FailoverTriggerGql, {
  name: "FailoverTrigger",
  description: "AUTOMATIC: decided by the failover monitor. MANUAL: requested through the API or the CLI.",
});

export enum FailoverStatusGql {
  RUNNING = "running",
  COMPLETED = "completed",
  FAILED = "failed",
}
registerEnumType(FailoverStatusGql, { name: "FailoverStatus" });

export enum FailoverOperationKindGql {
  FAILOVER = "failover",
  SWITCHOVER = "switchover",
  FAILBACK = "failback",
  REJOIN = "rejoin",
  ADD_REPLICA = "add-replica",
  REMOVE_REPLICA = "remove-replica",
  RESEED = "reseed",
}
registerEnumType(FailoverOperationKindGql, {
  name: "FailoverOperationKind",
  description:
    "What the operation in flight does; REJOIN brings a fenced node back as a replica, ADD_REPLICA / REMOVE_REPLICA change the members, RESEED seeds a replica again whose slot was lost.",
});

@ObjectType({ description: "A change of primary (failover, switchover or failback) and how it went." })
export class Failover {
  @Field(() => ID) id!: string;
  @Field(() => FailoverKindGql) kind!: FailoverKindGql;
  @Field(() => FailoverTriggerGql) trigger!: FailoverTriggerGql;
  @Field({ description: "The primary when it began." }) from!: string;
  @Field(() => String, { nullable: true, description: "The node promoted (null when none was chosen)." }) to!: string | null;
  @Field(() => FailoverStatusGql) status!: FailoverStatusGql;
  @Field() reason!: string;
  @Field(() => String, { nullable: true, description: "Why it failed." }) error!: string | null;
  @Field(() => Float, {
    nullable: true,
    description:
      "Bytes of WAL the old primary had written that the promoted node never received (asynchronous mode; 0 for a switchover); null when unknown.",
  })
  lostBytes!: number | null;
  @Field({ description: "ISO 8601." }) startedAt!: string;
  @Field(() => String, {
    nullable: true,
    description: "When the old primary was fenced (failover) or stopped cleanly (switchover, failback); ISO 8601.",
  })
  fencedAt!: string | null;
  @Field(() => String, { nullable: true, description: "When the new primary accepted writes; ISO 8601." }) promotedAt!: string | null;
  @Field(() => String, { nullable: true, description: "ISO 8601." }) finishedAt!: string | null;
  @Field(() => Int, { nullable: true, description: "From start to finish, in milliseconds." }) durationMs!: number | null;
}

@ObjectType({ description: "The operation in flight on the cluster (one at a time, across every service instance)." })
export class FailoverOperation {
  @Field(() => ID) id!: string;
  @Field(() => FailoverOperationKindGql) kind!: FailoverOperationKindGql;
  @Field(() => FailoverTriggerGql) trigger!: FailoverTriggerGql;
  @Field({ description: "Its last recorded stage, e.g. detected, fenced, promoting, promoted, stopped, rewinding." }) stage!: string;
  @Field({ description: "The primary when it began (the node rejoined, for a rejoin)." }) from!: string;
  @Field(() => String, { nullable: true, description: "The node to promote, once chosen (the primary it rejoins, for a rejoin)." }) to!:
    string | null;
  @Field({ description: "ISO 8601." }) startedAt!: string;
}

@ObjectType({ description: "What the failover side of Relevo records about the cluster (in Redis)." })
export class FailoverState {
  @Field(() => String, {
    nullable: true,
    description:
      "The recorded primary: any other writable node is a split brain and is fenced. Null until the failover monitor has recorded one.",
  })
  primary!: string | null;
  @Field(() => Int, { nullable: true, description: "Bumped by every change of primary; null until a primary is recorded." }) epoch!:
    number | null;
  @Field(() => [String], { description: "Nodes fenced and not yet rejoined." }) fenced!: string[];
  @Field(() => [String], { description: "Synchronous mode: the standbys every commit waits for." }) syncSet!: string[];
  @Field(() => [String], {
    description: "Synchronous mode: the standbys known to hold every acknowledged commit; only these are promoted automatically.",
  })
  eligible!: string[];
  @Field({ description: "True while maintenance mode holds back automatic failover, rejoin and failback." }) maintenance!: boolean;
  @Field(() => FailoverOperation, { nullable: true }) operation!: FailoverOperation | null;
}

@ObjectType({ description: "A node added to the cluster." })
export class ReplicaMember {
  @Field(() => String)
  name!: string;

  @Field(() => String)
  host!: string;

  @Field(() => Int)
  port!: number;
}
