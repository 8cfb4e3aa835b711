import { connectionUriWithoutCredentials } from "../../postgres/connection";
import { uriTlsParameters } from "../../postgres/tls-settings";
import type { ClusterSnapshot, NodeSnapshot } from "../../cluster/topology";
import { NodeRoleGql, type Cluster, type Node } from "./cluster.type";

/** The database the client connection strings name: `postgres` exists in every cluster. */
const CLIENT_DATABASE = "postgres";

/**
 * Domain snapshot → GraphQL objects. Enum values are the domain's own
 * strings. The snapshot may come from an instance of an earlier version
 * (published to Redis, read by every instance): a field it did not have yet
 * gets its "not said" value rather than a null in a non-null field, which
 * would fail every query selecting it.
 */
export function toNode(node: NodeSnapshot): Node {
  return { ...node, reseeding: node.reseeding ?? false } as unknown as Node;
}

/**
 * Client connection strings: every node listed, libpq picks by
 * target_session_attrs (PostgreSQL 14+ libpq for prefer-standby), so they
 * stay valid across a failover. No credentials: they are shown to viewers.
 * TLS, verify-full, against the CA's file (its path on Relevo's host: a
 * client elsewhere copies it and changes sslrootcert).
 */
function connectionStrings(snapshot: ClusterSnapshot, caFile: string): Pick<Cluster, "writerConnectionString" | "readerConnectionString"> {
  const tls = uriTlsParameters(caFile);
  return {
    writerConnectionString: connectionUriWithoutCredentials(snapshot.nodes, CLIENT_DATABASE, {
      target_session_attrs: "read-write",
      ...tls,
    }),
    readerConnectionString: connectionUriWithoutCredentials(snapshot.nodes, CLIENT_DATABASE, {
      target_session_attrs: "prefer-standby",
      ...tls,
    }),
  };
}

export function toCluster(snapshot: ClusterSnapshot, options: { readonly caFile: string }): Cluster {
  const nodes = snapshot.nodes.map(toNode);
  const primary = nodes.find((node) => node.name === snapshot.primary) ?? null;
  return {
    name: snapshot.name,
    primary,
    primaryEndpoint: primary ? { host: primary.host, port: primary.port } : null,
    ...connectionStrings(snapshot, options.caFile),
    replicas: nodes.filter((node) => node.name !== snapshot.primary && node.role === NodeRoleGql.REPLICA),
    nodes,
    health: snapshot.health,
    healthReasons: [...snapshot.healthReasons],
    collectedAt: snapshot.collectedAt,
  } as Cluster;
}
