/**
 * s3rver in a process of its own, for the repository benchmark: its CPU
 * time is then its own (read from /proc), and the benchmark's memory is
 * Relevo's alone. Arguments: the directory for its objects, the bucket to
 * make. Prints the port it listens on (loopback) and runs until killed.
 */
import S3rver from "s3rver";

async function main(): Promise<void> {
  const [directory, bucket] = process.argv.slice(2);
  if (!directory || !bucket) throw new Error("usage: s3-server-process <directory> <bucket>");
  const server = new S3rver({ address: "127.0.0.1", port: 0, directory, silent: true, configureBuckets: [{ name: bucket }] });
  const { port } = await server.run();
  process.stdout.write(`${port}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`${(error as Error).message}\n`);
  process.exit(1);
});
