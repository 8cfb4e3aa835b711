import { Field, Float, Int, ObjectType, registerEnumType } from "type-graphql";

export enum NodeRoleGql {
  PRIMARY = "primary",
  REPLICA = "replica",
}
registerEnumType(NodeRoleGql, { name: "NodeRole", description: "Role as PostgreSQL reports it (pg_is_in_recovery)." });

export enum ReplicationStateGql {
  STREAMING = "streaming",
  CATCHUP = "catchup",
  STARTUP = "startup",
  BACKUP = "backup",
  STOPPING = "stopping",
  STOPPED = "stopped",
  UNKNOWN = "unknown",
}
registerEnumType(ReplicationStateGql, {
  name: "ReplicationState",
  description: "A replica's WAL streaming state (pg_stat_replication.state, or its WAL receiver's status).",
});

export enum ReplayPauseGql {
  NOT_PAUSED = "not paused",
  PAUSE_REQUESTED = "pause requested",
  PAUSED = "paused",
}
registerEnumType(ReplayPauseGql, {
  name: "ReplayPause",
  description:
    "A replica's WAL replay (pg_get_wal_replay_pause_state()). A restore test pauses a replica for a moment to take its reference point; a pause nobody holds is resumed within seconds (event node:replay-resumed).",
});

export enum ClusterHealthGql {
  HEALTHY = "healthy",
  DEGRADED = "degraded",
  CRITICAL = "critical",
}
registerEnumType(ClusterHealthGql, {
  name: "ClusterHealth",
  description:
    "HEALTHY: one primary, every replica streaming within the lag threshold. DEGRADED: one primary, some replica is not. CRITICAL: no primary, or more than one.",
});

export enum DriverStateGql {
  ABSENT = "absent",
  STOPPED = "stopped",
  RUNNING = "running",
  PAUSED = "paused",
  UNKNOWN = "unknown",
}
registerEnumType(DriverStateGql, {
  name: "DriverState",
  description:
    "The node's server process (or container) as its driver sees it. UNKNOWN: the driver could not tell (driver.error says why, e.g. the Docker engine does not answer); the node's PostgreSQL may still be serving.",
});

@ObjectType({
  description: "A replica's replication, from the primary's pg_stat_replication when it has a row for it, else from the replica itself.",
})
export class Replication {
  @Field(() => ReplicationStateGql)
  state!: ReplicationStateGql;

  @Field(() => String, { nullable: true, description: "Name of the node it streams from." })
  upstream!: string | null;

  @Field(() => String, { nullable: true })
  slotName!: string | null;

  @Field(() => Float, { nullable: true, description: "Bytes of WAL the primary has written that this replica has not replayed." })
  lagBytes!: number | null;

  @Field(() => Float, { nullable: true })
  writeLagSeconds!: number | null;

  @Field(() => Float, { nullable: true })
  flushLagSeconds!: number | null;

  @Field(() => Float, { nullable: true, description: "Seconds behind in replay; 0 when caught up." })
  replayLagSeconds!: number | null;

  @Field(() => String, { nullable: true, description: "async, sync, potential or quorum (pg_stat_replication.sync_state)." })
  syncState!: string | null;

  @Field(() => String, { nullable: true, description: "When the replica last heard from its upstream (ISO 8601)." })
  lastMessageAt!: string | null;

  @Field(() => ReplayPauseGql, { nullable: true, description: "Whether the replica's WAL replay is paused; null when it did not answer." })
  replayPause!: ReplayPauseGql | null;
}

@ObjectType({ description: "A replication slot on a node." })
export class ReplicationSlot {
  @Field() name!: string;
  @Field() type!: string;
  @Field() active!: boolean;
  @Field(() => String, { nullable: true }) restartLsn!: string | null;
  @Field(() => String, { nullable: true, description: "reserved, extended, unreserved or lost." }) walStatus!: string | null;
  @Field(() => Float, { nullable: true, description: "WAL held back by this slot, in bytes." }) retainedBytes!: number | null;
}

@ObjectType({ description: "A node's container as the Docker engine sees it." })
export class NodeContainer {
  @Field() id!: string;
  @Field() name!: string;
  @Field() image!: string;
  @Field({ description: "The engine's status: created, running, paused, restarting, exited or dead." }) status!: string;
  @Field(() => String, { nullable: true, description: "The image's HEALTHCHECK verdict (starting, healthy, unhealthy); null without one." })
  health!: string | null;
  @Field(() => Int, { description: "How often the engine restarted it." }) restartCount!: number;
}

@ObjectType({ description: "What the node driver knows of the node." })
export class NodeDriverView {
  @Field({ description: "local or docker." }) kind!: string;
  @Field(() => DriverStateGql) state!: DriverStateGql;
  @Field(() => Int, { nullable: true, description: "Postmaster pid (local driver)." }) pid!: number | null;
  @Field() dataDirectory!: string;
  @Field(() => String, { nullable: true, description: "Container id (docker driver)." }) containerId!: string | null;
  @Field(() => NodeContainer, {
    nullable: true,
    description: "The container (docker driver); null when there is none, e.g. removed behind Relevo's back.",
  })
  container!: NodeContainer | null;
  @Field(() => String, {
    nullable: true,
    description: "Why the driver could not tell the node's state (e.g. the Docker engine does not answer).",
  })
  error!: string | null;
}

@ObjectType({ description: "One PostgreSQL node of the cluster." })
export class Node {
  @Field() name!: string;
  @Field(() => NodeRoleGql) role!: NodeRoleGql;
  @Field({ description: "False when the role is the last known one because the node could not be asked." }) roleConfirmed!: boolean;
  @Field() reachable!: boolean;
  @Field(() => String, { nullable: true, description: "Why the node is unreachable." }) error!: string | null;
  @Field() host!: string;
  @Field(() => Int) port!: number;
  @Field(() => String, { nullable: true }) version!: string | null;
  @Field(() => Int, { nullable: true }) timeline!: number | null;
  @Field(() => String, { nullable: true, description: "Primary: current write LSN. Replica: last replayed LSN." }) currentLsn!:
    string | null;
  @Field(() => String, { nullable: true }) receivedLsn!: string | null;
  @Field(() => String, { nullable: true }) replayedLsn!: string | null;
  @Field(() => Replication, { nullable: true, description: "Null on the primary." }) replication!: Replication | null;
  @Field(() => [ReplicationSlot]) slots!: ReplicationSlot[];
  @Field(() => NodeDriverView) driver!: NodeDriverView;
  @Field({ description: "When this node was last polled (ISO 8601)." }) checkedAt!: string;
  @Field({
    description:
      "True while the node is being re-made: seeded again from scratch by a reseed in flight, or destroyed to be seeded again and not seeded yet (the failover monitor seeds it again).",
  })
  reseeding!: boolean;
}

@ObjectType({ description: "Where a PostgreSQL server listens." })
export class Endpoint {
  @Field() host!: string;
  @Field(() => Int) port!: number;
}

@ObjectType({ description: "The cluster as last observed by the topology collector." })
export class Cluster {
  @Field() name!: string;
  @Field(() => Node, { nullable: true, description: "Null when no node is a reachable primary (or several are)." }) primary!: Node | null;
  @Field(() => Endpoint, { nullable: true, description: "The primary's host and port; null when there is no primary." })
  primaryEndpoint!: Endpoint | null;
  @Field({
    description:
      "libpq URI listing every node, with target_session_attrs=read-write: reaches whichever node is the primary. TLS: sslmode=verify-full with sslrootcert naming the CA's certificate file on Relevo's host (copy it and change the path elsewhere). No credentials: bring your own (PGUSER, PGPASSWORD or .pgpass).",
  })
  writerConnectionString!: string;
  @Field({
    description:
      "libpq URI listing every node, with target_session_attrs=prefer-standby: a replica when one answers, else the primary. TLS as writerConnectionString. No credentials.",
  })
  readerConnectionString!: string;
  @Field(() => [Node]) replicas!: Node[];
  @Field(() => [Node]) nodes!: Node[];
  @Field(() => ClusterHealthGql) health!: ClusterHealthGql;
  @Field(() => [String]) healthReasons!: string[];
  @Field({ description: "When the snapshot was taken (ISO 8601)." }) collectedAt!: string;
}
