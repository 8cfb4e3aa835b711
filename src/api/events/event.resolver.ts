import { Arg, Args, Authorized, Ctx, ID, Query, Resolver, Root, Subscription } from "type-graphql";
import type { ClusterEvent as DomainEvent, EventKind } from "../../events/event-map";
import { EventStreamReads } from "../../events/event-log";
import { EVENTS_TOPIC } from "../../redis/keys";
import type { ApiContext, ApiServices } from "../context";
import { FIELD_COSTS, filtersEventStream, pagedFieldCost } from "../limits";
import { perRequest } from "../request-memo";
import { ClusterEventsSubscriptionArgs, EventsArgs } from "./event.args";
import { ClusterEvent, ClusterEventConnection } from "./event.type";

function toEvent(event: DomainEvent): ClusterEvent {
  return {
    id: event.id,
    kind: event.kind,
    severity: event.severity,
    node: event.node,
    message: event.message,
    data: event.data as Record<string, unknown>,
    actor: event.actor,
    occurredAt: event.occurredAt,
    cursor: event.streamId,
  } as ClusterEvent;
}

@Resolver()
export class EventResolver {
  constructor(private readonly services: ApiServices) {}

  @Authorized("viewer")
  @Query(() => ClusterEventConnection, {
    description: "Recent events, newest first, from the Redis stream (older ones are in PostgreSQL's events table).",
    complexity: pagedFieldCost({
      sizeArgument: "first",
      defaultSize: 50,
      maxSize: 500,
      fixed: (args) => (filtersEventStream(args) ? FIELD_COSTS.eventScan : 0),
    }),
  })
  async events(@Args(() => EventsArgs) args: EventsArgs, @Ctx() context: ApiContext): Promise<ClusterEventConnection> {
    const page = await this.services.events.page(
      { first: args.first, after: args.after, kinds: (args.kinds ?? null) as EventKind[] | null, node: args.node },
      perRequest(context, "event-stream-reads", () => new EventStreamReads()),
    );
    const edges = page.events.map((event) => ({ cursor: event.streamId, node: toEvent(event) }));
    return { edges, pageInfo: { hasNextPage: page.hasNextPage, endCursor: edges[edges.length - 1]?.cursor ?? null } };
  }

  @Authorized("viewer")
  @Subscription(() => ClusterEvent, {
    topics: EVENTS_TOPIC,
    filter: ({ payload, args }: { payload: DomainEvent; args: ClusterEventsSubscriptionArgs }) =>
      (!args.kinds || args.kinds.length === 0 || args.kinds.includes(payload.kind)) && (!args.node || payload.node === args.node),
    description: "Every new event, as it is emitted.",
  })
  clusterEvents(@Root() event: DomainEvent, @Args(() => ClusterEventsSubscriptionArgs) _args: ClusterEventsSubscriptionArgs): ClusterEvent {
    return toEvent(event);
  }

  @Authorized("viewer")
  @Subscription(() => ClusterEvent, {
    topics: EVENTS_TOPIC,
    filter: ({ payload, args }: { payload: DomainEvent; args: { id?: string | null } }) =>
      isBackupEvent(payload) && (!args.id || (payload.data as { id?: string }).id === args.id),
    description:
      "Backup events as they are emitted (started, completed, failed, verified, expired, cataloged) and the schedules' (skipped, failed); with id, only that backup's.",
  })
  backupEvents(@Root() event: DomainEvent, @Arg("id", () => ID, { nullable: true }) _id?: string | null): ClusterEvent {
    return toEvent(event);
  }
}

function isBackupEvent(event: DomainEvent): boolean {
  return event.kind.startsWith("backup:") || event.kind.startsWith("schedule:");
}
