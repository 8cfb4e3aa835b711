import "reflect-metadata";
import type { GraphQLSchema } from "graphql";
import { buildSchema, type ContainerType, type PubSub } from "type-graphql";
import { authChecker } from "./auth/auth";
import { BackupResolver } from "./backups/backup.resolver";
import { CertificateResolver } from "./certificates/certificate.resolver";
import { ScheduleResolver } from "./schedules/schedule.resolver";
import { ClusterResolver } from "./cluster/cluster.resolver";
import type { ApiServices } from "./context";
import { EventResolver } from "./events/event.resolver";
import { FailoverResolver } from "./failover/failover.resolver";
import { RepositoryResolver } from "./repositories/repository.resolver";

export const RESOLVERS = [
  ClusterResolver,
  EventResolver,
  BackupResolver,
  RepositoryResolver,
  ScheduleResolver,
  FailoverResolver,
  CertificateResolver,
] as const;

/** The one schema definition, for the server and for the committed SDL alike. */
export function buildRelevoSchema(options: { pubSub: PubSub; container?: ContainerType }): Promise<GraphQLSchema> {
  return buildSchema({
    resolvers: RESOLVERS,
    pubSub: options.pubSub,
    authChecker,
    container: options.container,
    validate: { forbidUnknownValues: false },
  });
}

/**
 * The executable schema with everything injected (no globals): each
 * resolver class is constructed once with the services.
 */
export async function createSchema(services: ApiServices, pubSub: PubSub): Promise<GraphQLSchema> {
  const instances = new Map<unknown, unknown>(RESOLVERS.map((Resolver) => [Resolver, new Resolver(services)]));
  return buildRelevoSchema({ pubSub, container: { get: (someClass) => instances.get(someClass) } });
}
