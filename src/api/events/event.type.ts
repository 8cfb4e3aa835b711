import { GraphQLJSONObject } from "graphql-scalars";
import { Field, ID, ObjectType, registerEnumType } from "type-graphql";

export enum SeverityGql {
  INFO = "info",
  WARNING = "warning",
  CRITICAL = "critical",
}
registerEnumType(SeverityGql, { name: "Severity" });

@ObjectType({ description: "Who triggered an event through the API." })
export class EventActor {
  @Field({ description: "Token id (not the token)." }) id!: string;
  @Field({ description: "viewer or operator." }) role!: string;
}

@ObjectType({ description: "Something that happened in the cluster. Kept in Redis first, consolidated into PostgreSQL (table events)." })
export class ClusterEvent {
  @Field(() => ID) id!: string;
  @Field({ description: "e.g. node:down, replication:streaming-lost, api:mutation (see docs/events.md for the list)." }) kind!: string;
  @Field(() => SeverityGql) severity!: SeverityGql;
  @Field(() => String, { nullable: true }) node!: string | null;
  @Field() message!: string;
  @Field(() => GraphQLJSONObject) data!: Record<string, unknown>;
  @Field(() => EventActor, { nullable: true }) actor!: EventActor | null;
  @Field({ description: "ISO 8601." }) occurredAt!: string;
  @Field({ description: "Position in the event stream; use as `after` to page." }) cursor!: string;
}

@ObjectType()
export class ClusterEventEdge {
  @Field() cursor!: string;
  @Field(() => ClusterEvent) node!: ClusterEvent;
}

@ObjectType()
export class PageInfo {
  @Field() hasNextPage!: boolean;
  @Field(() => String, { nullable: true }) endCursor!: string | null;
}

@ObjectType({ description: "Events, newest first (Relay connection)." })
export class ClusterEventConnection {
  @Field(() => [ClusterEventEdge]) edges!: ClusterEventEdge[];
  @Field(() => PageInfo) pageInfo!: PageInfo;
}
