import { mkdir, readFile } from "node:fs/promises";
import path from "node:path";
import { withFileLock, type ProcessIdentity } from "../storage/file-lock";
import { replaceFileDurably } from "../util/durable-file";

/** A change to the record is a read and a small write: a holder past this is stuck. */
const REGISTRY_LOCK_WAIT_MS = 30_000;

/**
 * The multipart uploads an S3 store has begun and not yet completed or
 * aborted. An upload a crash interrupts leaves its parts stored (and
 * billed) until someone aborts it, and not every S3-protocol server can
 * list the open ones (ListMultipartUploads): so Relevo records each upload
 * id before its first part is sent and aborts, when it opens the store
 * again, every one still recorded.
 */
export interface UploadRegistry {
  begun(upload: OpenUpload): Promise<void>;
  ended(uploadId: string): Promise<void>;
  /** Every upload recorded and not ended (after a crash: the abandoned ones). */
  open(): Promise<OpenUpload[]>;
}

export interface OpenUpload {
  readonly uploadId: string;
  /** The object's key in the bucket (the store's prefix included). */
  readonly bucketKey: string;
  readonly begunAt: string;
  /** The process that runs it: an upload is abandoned only once that process is gone (another may share the file). */
  readonly owner: ProcessIdentity;
}

/**
 * An UploadRegistry in a file of the data home (0600, replaced durably).
 * Several processes may share it (the service, `relevo repo check`): each
 * change is made under a lock file beside it, and queued in order within
 * the process.
 */
export class FileUploadRegistry implements UploadRegistry {
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly file: string) {}

  begun(upload: OpenUpload): Promise<void> {
    return this.change((uploads) => [...uploads.filter((known) => known.uploadId !== upload.uploadId), upload]);
  }

  ended(uploadId: string): Promise<void> {
    return this.change((uploads) => uploads.filter((known) => known.uploadId !== uploadId));
  }

  async open(): Promise<OpenUpload[]> {
    await this.queue.catch(() => undefined);
    return this.read();
  }

  private change(edit: (uploads: OpenUpload[]) => OpenUpload[]): Promise<void> {
    const next = this.queue
      .catch(() => undefined)
      .then(async () => {
        await mkdir(path.dirname(this.file), { recursive: true, mode: 0o700 });
        await withFileLock(`${this.file}.lock`, { purpose: "multipart upload record", waitMs: REGISTRY_LOCK_WAIT_MS }, async () => {
          await replaceFileDurably(this.file, `${JSON.stringify(edit(await this.read()), null, 1)}\n`, { mode: 0o600 });
        });
      });
    this.queue = next;
    return next;
  }

  private async read(): Promise<OpenUpload[]> {
    const text = await readFile(this.file, "utf8").catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return "[]";
      throw error;
    });
    const parsed = JSON.parse(text) as unknown;
    return Array.isArray(parsed) ? (parsed as OpenUpload[]) : [];
  }
}
