import {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
  type CreateMultipartUploadCommandOutput,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { NodeHttpHandler } from "@smithy/node-http-handler";
import https from "node:https";
import http from "node:http";
import { Readable } from "node:stream";
import type { S3RepositorySettings } from "../config/repository-config";
import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import {
  assertKeyPrefix,
  assertObjectKey,
  objectNotFound,
  rangeOutside,
  type ByteRange,
  type ObjectInfo,
  type ObjectStore,
  type PutOptions,
} from "./object-store";
import { processRuns, thisProcess } from "../storage/file-lock";
import type { UploadRegistry } from "./upload-registry";

/**
 * Where the bucket is and how to reach it, as the repository's variables
 * give it (see repository-config.ts), with what the store needs besides.
 */
export type S3StoreSettings = Pick<
  S3RepositorySettings,
  "bucket" | "endpoint" | "region" | "uriStyle" | "prefix" | "accessKeyId" | "secretAccessKey" | "requestChecksums"
> & {
  /** PEM of the CA(s) to trust for the endpoint beside Node's roots (RELEVO_REPO<n>_S3_CA_FILE read); "" none. */
  readonly caPem: string;
  readonly requestTimeoutMs: number;
  /** Attempts per request (the SDK's standard retry: exponential backoff with jitter on 5xx, throttling and network errors). */
  readonly maxAttempts: number;
  /** A stream is uploaded in parts of this size, this many at a time: its memory is about their product. */
  readonly partSizeBytes: number;
  readonly partsInFlight: number;
};

/**
 * An ObjectStore in an S3-compatible bucket, through the AWS SDK. Nothing
 * here is specific to one server: path- or host-style addressing, the
 * SDK's retries and timeouts, multipart uploads (lib-storage) whose ids
 * Relevo records (UploadRegistry) so that an upload a crash abandons is
 * aborted at the next open.
 */
export class S3Store implements ObjectStore {
  readonly location: string;
  private readonly client: S3Client;
  /** Uploads this process runs now: not abandoned, whatever the registry says. */
  private readonly running = new Set<string>();
  /** This process, as the registry names an upload's owner. */
  private readonly owner = thisProcess();

  /** The settings without the secret (the client holds the credentials): nothing printed or logged of the store shows it. */
  private readonly settings: Omit<S3StoreSettings, "secretAccessKey">;

  private constructor(
    settings: S3StoreSettings,
    private readonly uploads: UploadRegistry,
    private readonly logger: Logger,
  ) {
    const { secretAccessKey: _secret, ...withoutSecret } = settings;
    this.settings = withoutSecret;
    const endpointText = settings.endpoint === "" ? "" : ` at ${settings.endpoint}`;
    this.location = `s3://${settings.bucket}/${settings.prefix}${endpointText}`;
    const agentOptions = { keepAlive: true, maxSockets: Math.max(8, settings.partsInFlight * 2) };
    this.client = new S3Client({
      region: settings.region,
      ...(settings.endpoint === "" ? {} : { endpoint: settings.endpoint }),
      forcePathStyle: settings.uriStyle === "path",
      ...(settings.accessKeyId === ""
        ? {}
        : { credentials: { accessKeyId: settings.accessKeyId, secretAccessKey: settings.secretAccessKey } }),
      maxAttempts: settings.maxAttempts,
      requestChecksumCalculation: settings.requestChecksums ? "WHEN_SUPPORTED" : "WHEN_REQUIRED",
      responseChecksumValidation: settings.requestChecksums ? "WHEN_SUPPORTED" : "WHEN_REQUIRED",
      requestHandler: new NodeHttpHandler({
        connectionTimeout: settings.requestTimeoutMs,
        // A store that accepts a connection and then stays silent: the request fails after this long without a byte
        // either way (then is retried), never hangs (a pass, a backup, the stop waiting on it for good). Inactivity,
        // not the whole request: a large part on a slow link keeps sending. (requestTimeout alone only logs.)
        socketTimeout: settings.requestTimeoutMs,
        httpsAgent: new https.Agent({ ...agentOptions, ...(settings.caPem === "" ? {} : { ca: [settings.caPem] }) }),
        httpAgent: new http.Agent(agentOptions),
      }),
    });
    // Every multipart upload's id recorded before its first part is sent: see UploadRegistry.
    this.client.middlewareStack.add(
      (next, context) => async (args) => {
        const result = await next(args);
        if (context.commandName === "CreateMultipartUploadCommand") {
          const output = result.output as CreateMultipartUploadCommandOutput;
          if (output.UploadId && output.Key) {
            this.running.add(output.UploadId);
            await this.uploads.begun({
              uploadId: output.UploadId,
              bucketKey: output.Key,
              begunAt: new Date().toISOString(),
              owner: await this.owner,
            });
          }
        }
        return result;
      },
      { step: "initialize", name: "relevoRecordUploads" },
    );
  }

  /** The store, with the uploads an earlier process abandoned aborted first. */
  static async open(settings: S3StoreSettings, uploads: UploadRegistry, logger: Logger): Promise<S3Store> {
    const store = new S3Store(settings, uploads, logger);
    try {
      // The bucket asked for first: a HEAD of an object cannot tell a missing bucket from a missing object.
      await store.call("", () => store.client.send(new HeadBucketCommand({ Bucket: settings.bucket })), { bucket: true });
      await store.abortAbandoned();
    } catch (error) {
      await store.close();
      throw error;
    }
    return store;
  }

  async put(key: string, body: Readable | Buffer, options: PutOptions = {}): Promise<ObjectInfo> {
    const bucketKey = this.bucketKeyOf(key);
    options.signal?.throwIfAborted();
    if (Buffer.isBuffer(body) && body.length <= this.settings.partSizeBytes) {
      await this.call(key, () =>
        this.client.send(new PutObjectCommand({ Bucket: this.settings.bucket, Key: bucketKey, Body: body, ContentLength: body.length }), {
          abortSignal: options.signal,
        }),
      );
      options.onProgress?.(body.length);
    } else {
      const upload = new Upload({
        client: this.client,
        params: { Bucket: this.settings.bucket, Key: bucketKey, Body: Buffer.isBuffer(body) ? Readable.from([body]) : body },
        partSize: this.settings.partSizeBytes,
        queueSize: this.settings.partsInFlight,
        // An upload that fails is aborted (its parts removed) by lib-storage; one a crash cuts by the next open.
        leavePartsOnError: false,
      });
      if (options.onProgress) upload.on("httpUploadProgress", (progress) => options.onProgress!(progress.loaded ?? 0));
      const abort = (): void => void upload.abort().catch(() => undefined);
      options.signal?.addEventListener("abort", abort, { once: true });
      let completed = false;
      try {
        await this.call(key, () => upload.done());
        completed = true;
      } finally {
        options.signal?.removeEventListener("abort", abort);
        if (upload.uploadId) {
          this.running.delete(upload.uploadId);
          // Forgotten once it completed, or once its abort is confirmed (lib-storage aborts a failed one; asked again
          // here, its answer known); an abort the store did not answer leaves it recorded, for the next open.
          if (completed || (await this.abortUpload(bucketKey, upload.uploadId))) await this.uploads.ended(upload.uploadId);
        }
      }
    }
    const info = await this.head(key);
    if (!info) throw new RelevoError(ErrorCode.RepositoryUnavailable, `${this.location}: ${key} was stored but is not listed`);
    return info;
  }

  async get(key: string, options: { readonly range?: ByteRange; readonly signal?: AbortSignal } = {}): Promise<Readable> {
    const bucketKey = this.bucketKeyOf(key);
    const range = options.range;
    const output = await this.call(key, () =>
      this.client.send(
        new GetObjectCommand({
          Bucket: this.settings.bucket,
          Key: bucketKey,
          ...(range ? { Range: `bytes=${range.start}-${range.end - 1}` } : {}),
        }),
        { abortSignal: options.signal },
      ),
    ).catch((error: unknown) => {
      // 416: the range starts past the object's end.
      if (range && error instanceof S3ServiceException && error.$metadata.httpStatusCode === 416) {
        throw new RelevoError(ErrorCode.Internal, `${this.location}: bytes ${range.start}-${range.end} start past the end of ${key}`, {
          details: { key },
        });
      }
      throw error;
    });
    const body = output.Body as Readable | undefined;
    if (!body) throw new RelevoError(ErrorCode.RepositoryUnavailable, `${this.location}: ${key} came without a body`);
    if (range) {
      // S3 shortens a range that ends past the object: refused here, as the directory refuses it.
      const total = Number(/\/(\d+)$/.exec(output.ContentRange ?? "")?.[1] ?? Number.NaN);
      if (!(range.end <= total)) {
        body.destroy();
        throw rangeOutside(this, key, range, total);
      }
    }
    return body;
  }

  async head(key: string): Promise<ObjectInfo | null> {
    const bucketKey = this.bucketKeyOf(key);
    try {
      const output = await this.call(key, () => this.client.send(new HeadObjectCommand({ Bucket: this.settings.bucket, Key: bucketKey })));
      return { key, size: output.ContentLength ?? 0, modifiedAt: output.LastModified ?? new Date(0), etag: output.ETag ?? "" };
    } catch (error) {
      if (error instanceof RelevoError && error.code === ErrorCode.NotFound) return null;
      throw error;
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    assertKeyPrefix(prefix);
    let token: string | undefined;
    do {
      const page = await this.call(prefix, () =>
        this.client.send(
          new ListObjectsV2Command({ Bucket: this.settings.bucket, Prefix: `${this.settings.prefix}${prefix}`, ContinuationToken: token }),
        ),
      );
      for (const entry of page.Contents ?? []) {
        if (!entry.Key?.startsWith(this.settings.prefix)) continue;
        yield {
          key: entry.Key.slice(this.settings.prefix.length),
          size: entry.Size ?? 0,
          modifiedAt: entry.LastModified ?? new Date(0),
          etag: entry.ETag ?? "",
        };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  async delete(keys: readonly string[]): Promise<void> {
    // One request per key: DeleteObjects needs a Content-MD5 or a checksum header that not every server takes.
    for (const key of keys) {
      const bucketKey = this.bucketKeyOf(key);
      await this.call(key, () => this.client.send(new DeleteObjectCommand({ Bucket: this.settings.bucket, Key: bucketKey })));
    }
  }

  close(): Promise<void> {
    this.client.destroy();
    return Promise.resolve();
  }

  /** Aborts every upload the registry holds that this process does not run (a crash's); what fails stays recorded. */
  async abortAbandoned(): Promise<number> {
    let aborted = 0;
    for (const upload of await this.uploads.open()) {
      // This process's own, or another's that still runs (the service while `relevo repo check` opens the store).
      if (this.running.has(upload.uploadId) || (await processRuns(upload.owner))) continue;
      if (!(await this.abortUpload(upload.bucketKey, upload.uploadId))) continue; // kept for the next open
      await this.uploads.ended(upload.uploadId);
      aborted += 1;
    }
    return aborted;
  }

  /**
   * Aborts a multipart upload; whether it is over: aborted, gone already
   * (completed, aborted, expired by a lifecycle rule), or on a server that
   * cannot abort one (s3rver answers 405: asking again would not help).
   * False when the store did not answer: the record stays, for a later try.
   */
  private async abortUpload(bucketKey: string, uploadId: string): Promise<boolean> {
    try {
      await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.settings.bucket, Key: bucketKey, UploadId: uploadId }));
      return true;
    } catch (error) {
      const status = error instanceof S3ServiceException ? error.$metadata.httpStatusCode : undefined;
      if (status === 405 || status === 501) {
        this.logger.warn(
          { repository: this.location, key: bucketKey, uploadId },
          "this S3 server cannot abort a multipart upload: its parts stay stored until removed with the server's own tools",
        );
        return true;
      }
      if (error instanceof S3ServiceException && (error.name === "NoSuchUpload" || status === 404)) return true;
      this.logger.warn({ repository: this.location, uploadId, err: (error as Error).message }, "a multipart upload was not aborted");
      return false;
    }
  }

  private bucketKeyOf(key: string): string {
    assertObjectKey(key);
    return `${this.settings.prefix}${key}`;
  }

  /**
   * `request`, its failures as Relevo's codes: a missing object NOT_FOUND, a
   * refusal ACCESS_DENIED, the rest UNAVAILABLE. `bucket`: the request is of
   * the bucket itself (its 404 is a missing bucket).
   */
  private async call<T>(key: string, request: () => Promise<T>, options: { readonly bucket?: boolean } = {}): Promise<T> {
    try {
      return await request();
    } catch (error) {
      throw this.translate(key, error, options.bucket ?? false);
    }
  }

  private translate(key: string, error: unknown, ofBucket: boolean): unknown {
    if (error instanceof RelevoError || (error instanceof Error && error.name === "AbortError")) return error;
    if (error instanceof S3ServiceException) {
      const status = error.$metadata.httpStatusCode;
      const noBucket = error.name === "NoSuchBucket" || (ofBucket && status === 404);
      if (!noBucket && (error.name === "NoSuchKey" || error.name === "NotFound" || status === 404)) {
        return objectNotFound(this, key);
      }
      if (noBucket) {
        return accessDenied(this, `the bucket ${this.settings.bucket} does not exist`, error);
      }
      if (error.name === "RequestTimeTooSkewed") {
        return accessDenied(this, "this host's clock is too far from the store's: set the time right (NTP)", error);
      }
      if (status === 401 || status === 403) {
        return accessDenied(this, `refused (${error.name}): check the access key, the secret and the bucket's permissions`, error);
      }
      if (status === 416) return error;
    }
    const reason = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    return new RelevoError(ErrorCode.RepositoryUnavailable, `${this.location}: ${key}: ${reason}`, {
      cause: error,
      details: { repository: this.location },
    });
  }
}

function accessDenied(store: ObjectStore, message: string, cause: unknown): RelevoError {
  return new RelevoError(ErrorCode.RepositoryAccessDenied, `${store.location}: ${message}`, {
    cause,
    details: { repository: store.location },
  });
}
