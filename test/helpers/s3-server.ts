import { once } from "node:events";
import { rm } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import S3rver from "s3rver";
import { tempHome } from "./home";

// The AWS SDK's credential chain would otherwise ask the EC2 instance metadata address, which tests never contact
// (every test store is given its credentials; this is the safety net).
process.env.AWS_EC2_METADATA_DISABLED = "true";

export interface S3TestServer {
  /** http://127.0.0.1:<port> */
  readonly endpoint: string;
  readonly port: number;
  /** Where s3rver keeps the buckets' objects (tests corrupt or remove objects there). */
  readonly directory: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  /** Stops it (the objects stay in `directory`); `start` again serves them on the same port. */
  stop(): Promise<void>;
  start(): Promise<void>;
  /** Whether it serves (started, not stopped since). */
  running(): Promise<boolean>;
}

/**
 * A real S3-protocol server (s3rver) on loopback, on a free port, with
 * `buckets` made: the object store the repository tests talk to. Its
 * signature check is on: a request signed with other credentials is
 * refused, as by AWS.
 */
export async function startS3Server(options: { readonly buckets: readonly string[] }): Promise<S3TestServer> {
  const directory = await tempHome("s3rver");
  let port = 0;
  let server: S3rver | null = null;
  const start = async (): Promise<void> => {
    server = new S3rver({
      address: "127.0.0.1",
      port,
      directory,
      silent: true,
      configureBuckets: options.buckets.map((name) => ({ name })),
    });
    port = (await server.run()).port;
  };
  await start();
  return {
    get endpoint() {
      return `http://127.0.0.1:${port}`;
    },
    get port() {
      return port;
    },
    directory,
    // s3rver's own fixed pair: its signature check uses it.
    accessKeyId: "S3RVER",
    secretAccessKey: "S3RVER",
    stop: async () => {
      await server?.close();
      server = null;
    },
    start,
    running: () => Promise.resolve(server !== null),
  };
}

export interface HttpRecorder {
  /** http://127.0.0.1:<port>: every request is forwarded to the target as it came. */
  readonly endpoint: string;
  /** "METHOD /path?query" of each request forwarded so far. */
  readonly requests: readonly string[];
  close(): Promise<void>;
}

/**
 * A pass-through HTTP proxy in front of `target` (an S3 server) that
 * records what each request asked: a test can see what Relevo sent where
 * the server's answers do not show it (an abort s3rver cannot carry out).
 */
export async function recordRequests(
  target: { readonly port: number },
  options: { readonly onRequest?: (request: string) => void } = {},
): Promise<HttpRecorder> {
  const requests: string[] = [];
  const server = http.createServer((request, response) => {
    requests.push(`${request.method} ${request.url}`);
    // Before it is forwarded: what the test reads here is the state when the server had not yet seen the request.
    options.onRequest?.(`${request.method} ${request.url}`);
    const forwarded = http.request(
      { host: "127.0.0.1", port: target.port, method: request.method, path: request.url, headers: request.headers },
      (answer) => {
        response.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(response);
      },
    );
    forwarded.on("error", () => response.destroy());
    request.pipe(forwarded);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    requests,
    close: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * Repository 1 (or `index`) in a bucket of a real S3-protocol server (s3rver on
 * loopback): the variables an operator sets, filled in once the server
 * listens (the cluster's beforeAll reads them after this one's).
 */
export function useS3Repository(
  bucket: { readonly bucket: string; readonly prefix: string; readonly index?: number },
  extra: NodeJS.ProcessEnv = {},
): { env: NodeJS.ProcessEnv; server: () => S3TestServer } {
  const env: NodeJS.ProcessEnv = {};
  let server: S3TestServer | undefined;
  const variable = `RELEVO_REPO${bucket.index ?? 1}_`;
  beforeAll(async () => {
    server = await startS3Server({ buckets: [bucket.bucket] });
    Object.assign(env, {
      [`${variable}TYPE`]: "s3",
      [`${variable}S3_BUCKET`]: bucket.bucket,
      [`${variable}S3_ENDPOINT`]: server.endpoint,
      [`${variable}S3_REGION`]: "us-east-1",
      [`${variable}S3_URI_STYLE`]: "path",
      [`${variable}S3_PREFIX`]: bucket.prefix,
      [`${variable}S3_ACCESS_KEY_ID`]: server.accessKeyId,
      [`${variable}S3_SECRET_ACCESS_KEY`]: server.secretAccessKey,
      ...extra,
    });
  });
  return {
    env,
    server: () => {
      if (!server) throw new Error("the S3 server did not start");
      return server;
    },
  };
}

/** Stops the S3 server after the cluster (afterAll hooks run in the order they are declared). */
export function stopAfterCluster(s3: { server: () => S3TestServer }): void {
  afterAll(async () => {
    const server = s3.server();
    await server.stop();
    await rm(server.directory, { recursive: true, force: true });
  });
}
