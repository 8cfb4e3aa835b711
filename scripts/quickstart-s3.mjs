// `npm run quickstart` with RELEVO_REPO1_TYPE=s3 (scripts/quickstart.sh runs
// this then): when the endpoint is a loopback address nothing listens on, an
// S3-protocol server (s3rver, from npm: a development server, never for
// production) is started there first, with the bucket made and its objects
// under $RELEVO_HOME/s3rver, and `relevo up` is given s3rver's fixed key
// pair unless other credentials are set. Any other endpoint is the
// operator's own store: `relevo up` alone. Either way `relevo up` runs in
// its own process group, so that Ctrl-C reaches it once, through here, and
// the S3 server stops only after it (it pushes the last WAL at its stop).
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), "..");
const env = { ...process.env };
const LOOPBACK = new Set(["127.0.0.1", "localhost", "[::1]", "::1"]);

/** Whether something accepts connections at host:port. */
function listening(host, port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    socket.setTimeout(2000);
    socket.once("connect", () => resolve(socket.destroy() ?? true));
    socket.once("timeout", () => resolve(socket.destroy() ?? false));
    socket.once("error", () => resolve(false));
  });
}

/** s3rver at the endpoint when Relevo is pointed at a free loopback port; null otherwise (the store is the operator's). */
async function startLocalServer() {
  const bucket = env.RELEVO_REPO1_S3_BUCKET ?? "";
  let endpoint;
  try {
    endpoint = new URL(env.RELEVO_REPO1_S3_ENDPOINT ?? "");
  } catch {
    return null; // relevo up names what is wrong with the configuration
  }
  if (bucket === "" || endpoint.protocol !== "http:" || !LOOPBACK.has(endpoint.hostname) || endpoint.port === "") return null;
  const host = endpoint.hostname.replace(/^\[|\]$/g, "");
  const port = Number(endpoint.port);
  if (await listening(host, port)) return null;
  const { default: S3rver } = await import("s3rver");
  const home = path.resolve(root, env.RELEVO_HOME ?? ".relevo");
  // The data home as Relevo makes it (0711: the PostgreSQL user must traverse it), then the server's own directory.
  mkdirSync(home, { recursive: true, mode: 0o711 });
  const directory = path.join(home, "s3rver");
  mkdirSync(directory, { recursive: true, mode: 0o700 });
  const server = new S3rver({ address: host, port, directory, silent: true, configureBuckets: [{ name: bucket }] });
  await server.run();
  // s3rver checks its own fixed key pair; credentials set by the operator are kept (and refused by it if they differ).
  if (!env.RELEVO_REPO1_S3_ACCESS_KEY_ID && !env.RELEVO_REPO1_S3_SECRET_ACCESS_KEY) {
    env.RELEVO_REPO1_S3_ACCESS_KEY_ID = "S3RVER";
    env.RELEVO_REPO1_S3_SECRET_ACCESS_KEY = "S3RVER";
  }
  env.AWS_EC2_METADATA_DISABLED = "true";
  console.log(`S3 server (s3rver, for development) at ${endpoint.origin}, bucket ${bucket}, objects in ${directory}`);
  return server;
}

const server = await startLocalServer();
const relevo = spawn(process.execPath, [path.join(root, "bin/relevo"), "up"], { stdio: "inherit", env, detached: true });
// The first signal asks Relevo to stop cleanly; a second one (a stop that hangs) ends it at once.
let forwarded = false;
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(signal, () => {
    relevo.kill(forwarded ? "SIGKILL" : signal === "SIGHUP" ? "SIGTERM" : signal);
    forwarded = true;
  });
}
// This launcher failing must not leave Relevo running without its store.
process.on("uncaughtException", (error) => {
  console.error(error);
  relevo.kill("SIGTERM");
  process.exitCode = 1;
});
relevo.on("exit", (code, signal) => {
  void (server ? server.close() : Promise.resolve()).finally(() => process.exit(code ?? (signal ? 1 : 0)));
});
