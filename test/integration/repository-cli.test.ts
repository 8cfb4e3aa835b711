import { expect } from "@jest/globals";
import { execFile } from "node:child_process";
import { readdir } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { projectRoot } from "../../src/util/project-root";
import { tempHome } from "../helpers/home";
import { startS3Server, type S3TestServer } from "../helpers/s3-server";
import { DirectoryStore } from "../../src/repository/directory-store";
import { RepositoryKeyring, wrappedDataKeyKey } from "../../src/repository/repository-keyring";

const run = promisify(execFile);
const BIN = path.join(projectRoot(), "bin/relevo");
const BUCKET = "relevo-cli";
// s3rver checks the access key id only: any secret passes, and this one must never be printed.
const SECRET = "cli-test-secret-access-key-0123";
const PASS = "a cipher pass for the cli test";

/**
 * `relevo repo list` and `relevo repo check` from a fresh data home, as an
 * operator runs them before the service uses a repository: a directory
 * (repository 1), S3 on a real S3-protocol server (s3rver, loopback) and a
 * second directory. What is wrong is said with its code and exit status.
 */
describe("relevo repo list | check", () => {
  let s3: S3TestServer;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    s3 = await startS3Server({ buckets: [BUCKET] });
    const home = await tempHome("repo-cli");
    env = {
      ...process.env,
      RELEVO_HOME: home,
      RELEVO_LOG_LEVEL: "warn",
      RELEVO_REPO2_TYPE: "s3",
      RELEVO_REPO2_S3_BUCKET: BUCKET,
      RELEVO_REPO2_S3_ENDPOINT: s3.endpoint,
      RELEVO_REPO2_S3_URI_STYLE: "path",
      RELEVO_REPO2_S3_PREFIX: "clusters/test",
      RELEVO_REPO2_S3_ACCESS_KEY_ID: s3.accessKeyId,
      RELEVO_REPO2_S3_SECRET_ACCESS_KEY: SECRET,
      RELEVO_REPO2_CIPHER_PASS: PASS,
      RELEVO_REPO2_RETENTION_DAYS: "14",
      RELEVO_REPO3_PATH: path.join(home, "second-repository"),
    };
  });

  afterAll(async () => {
    await s3?.stop();
  });

  /** The CLI's exit status, stdout and stderr. */
  const relevo = async (args: string[], extra: NodeJS.ProcessEnv = {}): Promise<{ status: number; stdout: string; stderr: string }> =>
    run(process.execPath, [BIN, ...args], { env: { ...env, ...extra } }).then(
      ({ stdout, stderr }) => ({ status: 0, stdout, stderr }),
      (error: { code: number; stdout: string; stderr: string }) => ({ status: error.code, stdout: error.stdout, stderr: error.stderr }),
    );

  test("list names every repository by number, type and place, never a credential or the pass", async () => {
    const listed = await relevo(["repo", "list"]);
    expect(listed.status).toBe(0);
    expect(listed.stdout.trim().split("\n")).toEqual([
      expect.stringMatching(/^repo1 \(dir: .*\/repository\)$/),
      `repo2 (s3: s3://${BUCKET}/clusters/test/ at ${s3.endpoint}, encrypted); keeps 14 days`,
      expect.stringMatching(/^repo3 \(dir: .*\/second-repository\)$/),
    ]);
    const json = await relevo(["repo", "list", "--json"]);
    expect(JSON.parse(json.stdout)).toEqual([
      expect.objectContaining({ index: 1, type: "dir", encrypted: false }),
      expect.objectContaining({ index: 2, type: "s3", bucket: BUCKET, prefix: "clusters/test/", encrypted: true, retentionDays: 14 }),
      expect.objectContaining({ index: 3, type: "dir" }),
    ]);
    for (const output of [listed.stdout, json.stdout, listed.stderr, json.stderr]) {
      expect(output).not.toContain(PASS);
      expect(output).not.toContain(SECRET);
    }
  });

  test("check writes, reads, lists and deletes a probe in each store: all pass, and nothing is left behind", async () => {
    const checked = await relevo(["repo", "check"]);
    expect(checked.stderr).toBe("");
    expect(checked.status).toBe(0);
    const lines = checked.stdout.trim().split("\n");
    expect(lines.filter((line) => / ok$/.test(line))).toHaveLength(3);
    for (const step of ["write", "clock", "read", "range", "list", "delete"]) {
      expect(lines.filter((line) => line.startsWith(`  ok   ${step}`))).toHaveLength(3);
    }
    // No probe stays: not in the bucket's directory on the server, not in either directory repository.
    const json = JSON.parse((await relevo(["repo", "check", "--repo", "2", "--json"])).stdout) as Array<{ ok: boolean; steps: unknown[] }>;
    expect(json).toEqual([expect.objectContaining({ index: 2, ok: true, code: null })]);
    expect(await leftovers(path.join(s3.directory, BUCKET))).toEqual([]);
    expect(await leftovers(env.RELEVO_REPO3_PATH!)).toEqual([]);
  });

  test("an access key the store does not know: REPOSITORY_ACCESS_DENIED, exit 77, the write step says what to check", async () => {
    const checked = await relevo(["repo", "check", "--repo", "2"], { RELEVO_REPO2_S3_ACCESS_KEY_ID: "NOT-OURS" });
    expect(checked.status).toBe(77);
    expect(checked.stderr).toMatch(/^relevo: error \[REPOSITORY_ACCESS_DENIED\]: .*check the access key/);
    expect(checked.stdout).toMatch(/FAILED \[REPOSITORY_ACCESS_DENIED\]\n {2}FAIL write/);
    expect(checked.stdout + checked.stderr).not.toContain(PASS);
    expect(checked.stdout + checked.stderr).not.toContain(SECRET);
  });

  test("a bucket that does not exist: REPOSITORY_ACCESS_DENIED naming it", async () => {
    const checked = await relevo(["repo", "check", "--repo", "2"], { RELEVO_REPO2_S3_BUCKET: "no-such-bucket" });
    expect(checked.status).toBe(77);
    expect(checked.stderr).toContain("the bucket no-such-bucket does not exist");
  });

  test("a store that does not answer: REPOSITORY_UNAVAILABLE, exit 75; an unknown --repo is bad usage", async () => {
    await s3.stop();
    try {
      const checked = await relevo(["repo", "check", "--repo", "2"]);
      expect(checked.status).toBe(75);
      expect(checked.stderr).toMatch(/\[REPOSITORY_UNAVAILABLE\]/);
    } finally {
      await s3.start();
    }
    const unknown = await relevo(["repo", "check", "--repo", "9"]);
    expect(unknown.status).toBe(64);
    expect(unknown.stderr).toContain("configured: 1, 2, 3");
  });

  test("check's last step reads the keys: an encrypted repository without its pass, or with a wrong one, is REPOSITORY_ACCESS_DENIED", async () => {
    const variable = "RELEVO_REPO3_CIPHER_PASS";
    // A pass for an empty repository: fine, the service's first start makes the keys.
    const empty = await relevo(["repo", "check", "--repo", "3"], { [variable]: PASS });
    expect(empty.status).toBe(0);
    expect(empty.stdout).toMatch(/ok {3}keys {3}no keys yet/);
    // Repository 3 made encrypted, as the service would (cheap scrypt: the stored parameters are the ones used).
    const keyring = await RepositoryKeyring.open(new DirectoryStore(env.RELEVO_REPO3_PATH!), {
      cipherPass: PASS,
      variable,
      create: true,
      lock: (work) => work(), // the only maker here
      scrypt: { N: 2 ** 12, r: 8, p: 1 },
    });
    for (const pass of [undefined, "a pass that is not this repository's"]) {
      const checked = await relevo(["repo", "check", "--repo", "3"], pass === undefined ? {} : { [variable]: pass });
      expect(checked.status).toBe(77);
      expect(checked.stdout).toMatch(/FAILED \[REPOSITORY_ACCESS_DENIED\](\n {2}ok .*)+\n {2}FAIL keys/);
      expect(checked.stderr).toContain(variable);
      expect(checked.stdout + checked.stderr).not.toContain(PASS);
    }
    const right = await relevo(["repo", "check", "--repo", "3"], { [variable]: PASS });
    expect(right.status).toBe(0);
    expect(right.stdout).toContain(`ok   keys   ${variable} opens the repository's keys and the archive's key`);
    // The archive's wrapped key gone (what a start could not get past): the check unwraps it, and says so.
    const store = new DirectoryStore(env.RELEVO_REPO3_PATH!);
    const archiveKey = await keyring.archiveKey();
    await store.delete([wrappedDataKeyKey(archiveKey.id)]);
    const broken = await relevo(["repo", "check", "--repo", "3"], { [variable]: PASS });
    expect(broken.status).not.toBe(0);
    expect(broken.stdout).toMatch(/FAILED \[REPOSITORY_CORRUPT\](\n {2}ok .*)+\n {2}FAIL keys/);
    expect(broken.stderr).toContain(`data key ${archiveKey.id.toString("hex")} is not in the repository's keys`);
  });
});

/** Files left under `directory` (recursively), s3rver's bucket metadata aside. */
async function leftovers(directory: string): Promise<string[]> {
  const entries = await readdir(directory, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries
    .filter((entry) => entry.isFile() && !entry.name.startsWith("."))
    .map((entry) => path.join(entry.parentPath, entry.name))
    .filter((file) => !file.endsWith("_S3rver_bucket_config.json"));
}
