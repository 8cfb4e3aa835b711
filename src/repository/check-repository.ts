import { randomBytes } from "node:crypto";
import os from "node:os";
import { buffer } from "node:stream/consumers";
import { ErrorCode, RelevoError, isRelevoError } from "../errors";
import type { ObjectStore } from "./object-store";
import { assertNotEncrypted, hasContent, hasKeys, RepositoryKeyring } from "./repository-keyring";

/** What `relevo repo check` does to a store, in order; each step depends on the ones before. */
export type CheckStepName = "write" | "clock" | "read" | "range" | "list" | "delete" | "keys";

/** The repository's cipher pass as configured ("" for none), and its variable for messages. */
export interface KeysToCheck {
  readonly cipherPass: string;
  readonly variable: string;
}

export interface CheckStep {
  readonly step: CheckStepName;
  readonly ok: boolean;
  /** What was found: a figure when it passed, what is wrong (and what to do) when it failed. */
  readonly detail: string;
}

export interface RepositoryCheck {
  readonly steps: readonly CheckStep[];
  /** The first failure, with its code (REPOSITORY_ACCESS_DENIED, _UNAVAILABLE, _CORRUPT…); null when every step passed. */
  readonly failure: RelevoError | null;
}

/** Past this, times Relevo records (backups' ends, PITR targets) and the store's disagree enough to matter. */
export const MAX_CLOCK_SKEW_MS = 5 * 60_000;
const PROBE_SIZE = 65_536;

/**
 * Writes a probe object under `relevo-check/`, checks the store's clock
 * against this host's by its time, reads it back whole and by a range,
 * finds it by listing, and deletes it: what a repository needs of its
 * store, each step reported, the first failure with its code. The probe is
 * deleted even when a step between failed. Given `keys`, last, whether the
 * configured pass (or its absence) fits the repository's keys: read only,
 * never made here.
 */
export async function checkRepository(
  store: ObjectStore,
  options: { readonly now?: () => Date; readonly keys?: KeysToCheck } = {},
): Promise<RepositoryCheck> {
  const now = options.now ?? ((): Date => new Date());
  const key = `relevo-check/${
    os
      .hostname()
      .replace(/[^A-Za-z0-9_.-]/g, "_")
      .slice(0, 60) || "host"
  }-${process.pid}-${randomBytes(6).toString("hex")}`;
  const probe = randomBytes(PROBE_SIZE);
  const steps: CheckStep[] = [];
  let failure: RelevoError | null = null;
  let written = false;
  const step = async (name: CheckStepName, work: () => Promise<string>): Promise<boolean> => {
    if (failure) return false;
    try {
      steps.push({ step: name, ok: true, detail: await work() });
      return true;
    } catch (error) {
      failure = asRelevoError(error, store);
      steps.push({ step: name, ok: false, detail: failure.message });
      return false;
    }
  };
  try {
    let writtenAt = 0;
    await step("write", async () => {
      const before = now().getTime();
      await store.put(key, probe);
      written = true;
      writtenAt = (before + now().getTime()) / 2;
      return `${PROBE_SIZE} bytes written as ${key}`;
    });
    await step("clock", async () => {
      const info = await store.head(key);
      if (!info) throw new RelevoError(ErrorCode.RepositoryUnavailable, `${store.location}: the object just written is not there`);
      // The store's times have a second's resolution: half of it either way is no skew.
      const skewMs = info.modifiedAt.getTime() - writtenAt;
      if (Math.abs(skewMs) > MAX_CLOCK_SKEW_MS) {
        throw new RelevoError(
          ErrorCode.RepositoryAccessDenied,
          `${store.location}: this host's clock is ${Math.round(Math.abs(skewMs) / 1000)} s ${skewMs > 0 ? "behind" : "ahead of"} the store's: set the time right (NTP)`,
        );
      }
      return `the store's time is within ${Math.max(1, Math.round(Math.abs(skewMs) / 1000))} s of this host's`;
    });
    await step("read", async () => {
      const read = await buffer(await store.get(key));
      if (!read.equals(probe)) throw corrupt(store, key, "read back different bytes");
      return "read back whole, byte for byte";
    });
    await step("range", async () => {
      const read = await buffer(await store.get(key, { range: { start: 1000, end: 5096 } }));
      if (!read.equals(probe.subarray(1000, 5096))) throw corrupt(store, key, "a byte range came back different");
      return "a byte range read back";
    });
    await step("list", async () => {
      for await (const info of store.list("relevo-check/")) if (info.key === key) return "listed under its prefix";
      throw new RelevoError(
        ErrorCode.RepositoryUnavailable,
        `${store.location}: the object just written is not listed (list permission, or a store without read-after-write consistency)`,
      );
    });
    await step("delete", async () => {
      await store.delete([key]);
      written = false;
      if (await store.head(key))
        throw new RelevoError(ErrorCode.RepositoryUnavailable, `${store.location}: the probe is still there after its delete`);
      return "deleted";
    });
    const { keys } = options;
    if (keys) await step("keys", () => checkKeys(store, keys));
  } finally {
    // A step between failed: the probe does not stay (best effort: the delete itself may be what is refused).
    if (written) await store.delete([key]).catch(() => undefined);
  }
  return { steps, failure };
}

/** Whether the pass (or none) fits what the repository holds, as the service and a restore will open it. */
async function checkKeys(store: ObjectStore, keys: KeysToCheck): Promise<string> {
  if (keys.cipherPass === "") {
    await assertNotEncrypted(store, keys.variable);
    return "not encrypted, as configured";
  }
  if (!(await hasKeys(store)) && !(await hasContent(store))) {
    return "no keys yet: the service's first start makes them, and encrypts everything it writes";
  }
  const keyring = await RepositoryKeyring.open(store, { cipherPass: keys.cipherPass, variable: keys.variable, create: false });
  // The key the WAL archive is written under unwrapped too (read only): a record naming a key that is missing or does
  // not open would stop the service's start.
  await keyring.archiveKey();
  return `${keys.variable} opens the repository's keys and the archive's key`;
}

function corrupt(store: ObjectStore, key: string, what: string): RelevoError {
  return new RelevoError(ErrorCode.RepositoryCorrupt, `${store.location}: ${key} ${what}: the store does not keep what it is given`);
}

/** The stores give their failures Relevo's codes already (DirectoryStore, S3Store); anything else is an unavailable store. */
function asRelevoError(error: unknown, store: ObjectStore): RelevoError {
  if (isRelevoError(error)) return error;
  return new RelevoError(ErrorCode.RepositoryUnavailable, `${store.location}: ${(error as Error).message}`, { cause: error });
}
