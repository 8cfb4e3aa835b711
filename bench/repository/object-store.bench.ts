/**
 * bench/repository: the storage under repositories, a directory against
 * S3 (s3rver on loopback, in a process of its own), raw and through
 * Relevo's stored-object format (checked chunks, or AES-256-GCM).
 * For each: a put of BENCH_MIB (default 512) MiB of incompressible data as
 * a stream, the growth of this process's RSS during that put (the target:
 * under 128 MiB for a 1 GiB segment, whatever its size), a whole get, and
 * BENCH_RANGES (default 200) reads of 8 KiB at random places (a small file
 * of a bundle). For S3 also the CPU time s3rver spent, to tell its share
 * of the time from Relevo's. Prints a table.
 * Run: npm run build && npm run bench:repository
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { createLogger } from "../../src/log";
import { DirectoryStore } from "../../src/repository/directory-store";
import {
  getObject,
  openObjectReader,
  putObject,
  UNENCRYPTED,
  type DataKeyLookup,
  type ObjectMode,
  type ReadPolicy,
} from "../../src/repository/object-codec";
import type { ObjectStore } from "../../src/repository/object-store";
import { newDataKey } from "../../src/repository/repository-keys";
import { S3Store } from "../../src/repository/s3-store";
import { FileUploadRegistry } from "../../src/repository/upload-registry";
import { cpuMs, peakRssGrowth, startS3ServerProcess } from "../s3-server";

const MiB = 1024 * 1024;
const SIZE_MIB = Number(process.env.BENCH_MIB ?? 512);
const RANGES = Number(process.env.BENCH_RANGES ?? 200);
const BUCKET = "relevo-bench";
const dataKey = newDataKey();
const lookup: DataKeyLookup = (id) => Promise.resolve(id.equals(dataKey.id) ? dataKey : null);
const policies: Record<"checked" | "encrypted", ReadPolicy> = { checked: UNENCRYPTED, encrypted: { encrypted: true, lookup } };

/** SIZE_MIB of incompressible bytes, as 1 MiB pieces cut from 16 MiB of random data (nothing here compresses). */
function content(): Readable {
  const pool = randomBytes(16 * MiB);
  let sent = 0;
  return new Readable({
    read() {
      if (sent === SIZE_MIB) return void this.push(null);
      const offset = (sent % 16) * MiB;
      sent += 1;
      this.push(pool.subarray(offset, offset + MiB));
    },
  });
}

async function drain(stream: Readable): Promise<number> {
  let bytes = 0;
  for await (const chunk of stream) bytes += (chunk as Buffer).length;
  return bytes;
}

interface Row {
  store: string;
  format: string;
  putMiBs: number;
  rssMiB: number;
  getMiBs: number;
  rangeMs: number;
  serverCpuShare: string;
}

async function measure(store: ObjectStore, format: "raw" | "checked" | "encrypted", serverPid: number | null): Promise<Omit<Row, "store">> {
  const key = `bench/${format}/object`;
  const mode: ObjectMode = format === "encrypted" ? { encrypted: true, dataKey } : { encrypted: false };
  const serverBefore = serverPid === null ? 0 : await cpuMs(serverPid);
  const put = await peakRssGrowth(async () => {
    if (format === "raw") await store.put(key, content());
    else await putObject(store, key, content(), mode);
  });
  const getStarted = performance.now();
  const read = format === "raw" ? await drain(await store.get(key)) : await drain(await getObject(store, key, policies[format]));
  const getMs = performance.now() - getStarted;
  if (read !== SIZE_MIB * MiB) throw new Error(`read ${read} bytes of ${SIZE_MIB * MiB}`);
  const serverMs = serverPid === null ? 0 : (await cpuMs(serverPid)) - serverBefore;
  const rangeStarted = performance.now();
  // As a restore reads the small files of a bundle: the object opened once, then one range per file.
  const reader = format === "raw" ? null : await openObjectReader(store, key, policies[format]);
  for (let i = 0; i < RANGES; i += 1) {
    const start = Math.floor(Math.random() * (SIZE_MIB * MiB - 8192));
    if (reader === null) await drain(await store.get(key, { range: { start, end: start + 8192 } }));
    else await reader.read({ start, end: start + 8192 });
  }
  const rangeMs = (performance.now() - rangeStarted) / RANGES;
  await store.delete([key]);
  return {
    format,
    putMiBs: SIZE_MIB / (put.ms / 1000),
    rssMiB: put.growthMiB,
    getMiBs: SIZE_MIB / (getMs / 1000),
    rangeMs,
    serverCpuShare: serverPid === null ? "-" : `${Math.round((100 * serverMs) / (put.ms + getMs))}%`,
  };
}

async function main(): Promise<void> {
  const scratch = await mkdtemp(path.join(os.tmpdir(), "relevo-bench-repository-"));
  const server = await startS3ServerProcess(path.join(scratch, "s3rver"), BUCKET);
  try {
    const { port } = server;
    const logger = createLogger({ level: "silent" });
    const s3 = await S3Store.open(
      {
        bucket: BUCKET,
        endpoint: `http://127.0.0.1:${port}`,
        region: "us-east-1",
        uriStyle: "path",
        prefix: "bench/",
        accessKeyId: "S3RVER",
        secretAccessKey: "S3RVER",
        caPem: "",
        requestChecksums: false,
        requestTimeoutMs: 60_000,
        maxAttempts: 3,
        partSizeBytes: 8 * MiB,
        partsInFlight: 2,
      },
      new FileUploadRegistry(path.join(scratch, "uploads.json")),
      logger,
    );
    const directory = new DirectoryStore(path.join(scratch, "directory"));
    const rows: Row[] = [];
    for (const [name, store, pid] of [
      ["directory", directory, null],
      ["s3 (s3rver)", s3, server.pid],
    ] as const) {
      for (const format of ["raw", "checked", "encrypted"] as const) rows.push({ store: name, ...(await measure(store, format, pid)) });
    }
    await s3.close();
    console.log(
      `\nobject stores: ${SIZE_MIB} MiB incompressible, ${RANGES} reads of 8 KiB (node ${process.version}, ${os.cpus().length} cores)\n`,
    );
    console.log(
      "| store | format | put MiB/s | RSS growth during put (MiB) | get MiB/s | 8 KiB range read (ms) | s3rver's CPU / wall time |",
    );
    console.log("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for (const row of rows) {
      console.log(
        `| ${row.store} | ${row.format} | ${row.putMiBs.toFixed(0)} | ${row.rssMiB.toFixed(0)} | ${row.getMiBs.toFixed(0)} | ${row.rangeMs.toFixed(2)} | ${row.serverCpuShare} |`,
      );
    }
  } finally {
    server.stop();
    await rm(scratch, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
