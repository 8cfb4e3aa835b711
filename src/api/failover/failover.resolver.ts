import { Arg, Args, Authorized, Ctx, Mutation, Query, Resolver } from "type-graphql";
import { redisCall } from "../../redis/redis-client";
import { EventStreamReads } from "../../events/event-log";
import type { ApiContext, ApiServices } from "../context";
import { FIELD_COSTS, pagedFieldCost } from "../limits";
import { perRequest } from "../request-memo";
import { FailoversArgs } from "./failover.args";
import { toFailover, toFailoverState } from "./failover.mapper";
import { Failover, FailoverState, ReplicaMember } from "./failover.type";

@Resolver()
export class FailoverResolver {
  constructor(private readonly services: ApiServices) {}

  @Authorized("viewer")
  @Query(() => [Failover], {
    description:
      "Finished failovers, switchovers and failbacks, newest first: the consolidated Failover records, with recent ones not yet consolidated read from the events stream.",
    complexity: pagedFieldCost({ sizeArgument: "limit", defaultSize: 20, maxSize: 200, fixed: () => FIELD_COSTS.eventScan }),
  })
  async failovers(@Args(() => FailoversArgs) args: FailoversArgs, @Ctx() context: ApiContext): Promise<Failover[]> {
    const records = await perRequest(context, `failovers:${args.limit}`, () =>
      this.services.failover.failovers(
        args.limit,
        perRequest(context, "event-stream-reads", () => new EventStreamReads()),
      ),
    );
    return records.map(toFailover);
  }

  @Authorized("viewer")
  @Query(() => FailoverState, {
    description: "The recorded primary, fenced nodes, synchronous set, maintenance mode and the operation in flight.",
  })
  async failoverState(): Promise<FailoverState> {
    const { failover } = this.services;
    const [state, operation, maintenance] = await redisCall("reading the failover state", () =>
      Promise.all([failover.state(), failover.operation(), failover.maintenance()]),
    );
    return toFailoverState(state, operation, maintenance);
  }

  @Authorized("operator")
  @Mutation(() => Failover, {
    description:
      "Fences the primary and promotes the most advanced eligible replica (or `to`); waits until it completed. A healthy primary is refused (PRECONDITION_FAILED: use switchover) unless force; force also promotes a replica that is not eligible, which may lose acknowledged commits. NO_ELIGIBLE_REPLICA when no replica may be promoted, OPERATION_IN_PROGRESS while another operation runs.",
  })
  async failover(
    @Arg("to", () => String, { nullable: true, description: "The replica to promote (default: the most advanced eligible one)." })
    to: string | null,
    @Arg("force", () => Boolean, { defaultValue: false }) force: boolean,
  ): Promise<Failover> {
    return toFailover(await this.services.failover.failover({ to: to ?? null, force }));
  }

  @Authorized("operator")
  @Mutation(() => Failover, {
    description:
      "Planned change of primary to `to`, losing nothing: the primary stops cleanly, `to` confirms it received everything, is promoted, and the old primary follows it as a standby. Waits until it completed. PRECONDITION_FAILED when `to` is not a streaming replica close behind; BACKUP_IN_PROGRESS while a backup runs.",
  })
  async switchover(@Arg("to", () => String) to: string): Promise<Failover> {
    return toFailover(await this.services.failover.switchover(to));
  }

  @Authorized("operator")
  @Mutation(() => Failover, { description: "A switchover back to RELEVO_PREFERRED_PRIMARY; waits until it completed." })
  async failback(): Promise<Failover> {
    return toFailover(await this.services.failover.failback());
  }

  @Authorized("operator")
  @Mutation(() => String, {
    description:
      "Brings a fenced (or lost) node back as a replica of the primary and returns how: rewind (pg_rewind), reseed (seeded again from scratch) or restart (it already followed the primary).",
  })
  async rejoinNode(@Arg("name", () => String) name: string): Promise<string> {
    return this.services.failover.rejoin(name);
  }

  @Authorized("operator")
  @Mutation(() => ReplicaMember, {
    description:
      "Seeds a new streaming replica of the primary (pg_basebackup; from the newest backup and the archive when RELEVO_REPLICA_SEED=repository) on the next free port, over a slot of its own, and makes it a member; waits until it streams. BAD_USER_INPUT for an invalid or taken name.",
  })
  async addReplica(@Arg("name", () => String) name: string): Promise<ReplicaMember> {
    const node = await this.services.failover.addReplica(name);
    return { name: node.name, host: node.host, port: node.port };
  }

  @Authorized("operator")
  @Mutation(() => Boolean, {
    description:
      "Stops a replica, deletes its data and its slot on the primary, and removes it from the cluster. PRECONDITION_FAILED for the primary.",
  })
  async removeReplica(@Arg("name", () => String) name: string): Promise<boolean> {
    await this.services.failover.removeReplica(name);
    return true;
  }

  @Authorized("operator")
  @Mutation(() => Boolean, {
    description:
      "Maintenance mode on (true) or off: while on, no automatic failover, rejoin or failback (manual operations still run). Returns the new setting; a cluster:maintenance event names the token.",
  })
  async setMaintenance(@Arg("enabled", () => Boolean) enabled: boolean, @Ctx() context: ApiContext): Promise<boolean> {
    const actor = { id: context.identity.id, role: context.identity.role };
    return redisCall("setting maintenance mode", () => this.services.failover.setMaintenance(enabled, actor));
  }
}
