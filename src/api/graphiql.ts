import type { ApolloServerPlugin } from "@apollo/server";
import { renderGraphiQL } from "@graphql-yoga/render-graphiql";

const DEFAULT_QUERY = `# Paste your token in the Headers tab:
#   { "Authorization": "Bearer <token printed by relevo up>" }
query Cluster {
  cluster {
    name
    health
    primary { name }
    nodes {
      name role reachable host port
      replication { state lagBytes replayLagSeconds }
    }
  }
}
`;

/**
 * GraphiQL as Apollo's landing page, from one self-contained HTML page (JS,
 * CSS and fonts inlined): it works without internet, unlike Apollo's default
 * landing page, which loads its UI from a CDN.
 */
export function graphiqlLandingPagePlugin(): ApolloServerPlugin {
  const html = renderGraphiQL({
    endpoint: "/graphql",
    title: "Relevo",
    subscriptionsProtocol: "WS",
    defaultQuery: DEFAULT_QUERY,
    headers: JSON.stringify({ Authorization: "Bearer <token>" }, null, 2),
    shouldPersistHeaders: true,
  });
  return {
    serverWillStart() {
      return Promise.resolve({
        renderLandingPage: () => Promise.resolve({ html }),
      });
    },
  };
}
