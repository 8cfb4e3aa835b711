import { Arg, Authorized, Mutation, Query, Resolver, Root, Subscription } from "type-graphql";
import type { ClusterSnapshot } from "../../cluster/topology";
import { ErrorCode, RelevoError } from "../../errors";
import { redisCall } from "../../redis/redis-client";
import { TOPOLOGY_TOPIC } from "../../redis/keys";
import type { ApiServices } from "../context";
import { toCluster, toNode } from "./cluster.mapper";
import { Cluster, Node } from "./cluster.type";

@Resolver()
export class ClusterResolver {
  constructor(private readonly services: ApiServices) {}

  @Authorized("viewer")
  @Query(() => Cluster, { description: "The cluster's topology, as last polled (every RELEVO_TOPOLOGY_POLL_INTERVAL_MS)." })
  async cluster(): Promise<Cluster> {
    return toCluster(await this.snapshot(), this.services);
  }

  @Authorized("viewer")
  @Query(() => Node, { description: "One node by name; NOT_FOUND when there is no such node." })
  async node(@Arg("name", () => String) name: string): Promise<Node> {
    const snapshot = await this.snapshot();
    const node = snapshot.nodes.find((candidate) => candidate.name === name);
    if (!node) {
      throw new RelevoError(ErrorCode.NotFound, `no node named "${name}"; nodes are ${snapshot.nodes.map((n) => n.name).join(", ")}`);
    }
    return toNode(node);
  }

  @Authorized("operator")
  @Mutation(() => Cluster, { description: "Polls every node now instead of waiting for the next round, and returns the result." })
  async refreshTopology(): Promise<Cluster> {
    return toCluster(await this.services.collector.pollNow(), this.services);
  }

  @Authorized("viewer")
  @Subscription(() => Cluster, {
    topics: TOPOLOGY_TOPIC,
    description: "The topology each time a role, reachability, streaming state, lag threshold crossing or the health changes.",
  })
  topologyChanged(@Root() snapshot: ClusterSnapshot): Cluster {
    return toCluster(snapshot, this.services);
  }

  private async snapshot(): Promise<ClusterSnapshot> {
    const snapshot = await redisCall("reading the topology", () => this.services.topology.read());
    if (!snapshot) throw new RelevoError(ErrorCode.ServiceUnavailable, "the topology has not been collected yet; retry in a second");
    return snapshot;
  }
}
