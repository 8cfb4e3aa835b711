import path from "node:path";
import { readConfiguredFile } from "../config/configured-file";
import { describeRepository, type RepositorySettings } from "../config/repository-config";
import type { Logger } from "../log";
import { DirectoryStore } from "./directory-store";
import type { ObjectStore } from "./object-store";
import { S3Store } from "./s3-store";
import { FileUploadRegistry } from "./upload-registry";

/** How an S3 store reaches its server: per request at most this long, this many attempts (the SDK backs off between). */
const S3_REQUEST_TIMEOUT_MS = 30_000;
const S3_MAX_ATTEMPTS = 5;
/** Parts of 8 MiB, two in flight: a stream's upload holds about 16 MiB (bench/repository measures it). */
const S3_PART_SIZE = 8 * 1024 * 1024;
const S3_PARTS_IN_FLIGHT = 2;

/**
 * The store under a configured repository: its directory, or its bucket
 * (the CA file read, and the record of its multipart uploads in the data
 * home: `<home>/repositories/repo<n>-uploads.json`).
 */
export async function openObjectStore(
  settings: RepositorySettings,
  context: { readonly home: string; readonly logger: Logger },
): Promise<ObjectStore> {
  if (settings.type === "dir") return new DirectoryStore(settings.path);
  const caPem = settings.caFile === "" ? "" : await readConfiguredFile(settings.caFile, `RELEVO_REPO${settings.index}_S3_CA_FILE`);
  const uploads = new FileUploadRegistry(path.join(context.home, "repositories", `repo${settings.index}-uploads.json`));
  return S3Store.open(
    {
      bucket: settings.bucket,
      endpoint: settings.endpoint,
      region: settings.region,
      uriStyle: settings.uriStyle,
      prefix: settings.prefix,
      accessKeyId: settings.accessKeyId,
      secretAccessKey: settings.secretAccessKey,
      requestChecksums: settings.requestChecksums,
      caPem,
      requestTimeoutMs: S3_REQUEST_TIMEOUT_MS,
      maxAttempts: S3_MAX_ATTEMPTS,
      partSizeBytes: S3_PART_SIZE,
      partsInFlight: S3_PARTS_IN_FLIGHT,
    },
    uploads,
    context.logger.child({ repository: describeRepository(settings) }),
  );
}
