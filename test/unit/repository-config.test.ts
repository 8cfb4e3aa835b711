import { expect } from "@jest/globals";
import path from "node:path";
import { loadConfig } from "../../src/config/config";
import { describeRepository, loadRepositories } from "../../src/config/repository-config";
import { ErrorCode } from "../../src/errors";

const home = "/var/lib/relevo";
const load = (env: Record<string, string>, repository = ""): ReturnType<typeof loadRepositories> =>
  loadRepositories(env, { home, repository });

/** INVALID_CONFIG naming `variable`, and never the value given. */
function expectInvalid(env: Record<string, string>, variable: string, hidden?: string): void {
  let thrown: unknown = null;
  try {
    load(env);
  } catch (error) {
    thrown = error;
  }
  expect(thrown).toMatchObject({ code: ErrorCode.InvalidConfig, details: { env: variable } });
  expect((thrown as Error).message).toContain(variable);
  if (hidden !== undefined) expect((thrown as Error).message).not.toContain(hidden);
}

describe("repositories, numbered as pgBackRest numbers them", () => {
  test("repository 1 is a directory by default: RELEVO_REPOSITORY, RELEVO_REPO1_PATH (the same) or <home>/repository", () => {
    expect(load({})).toEqual([
      { index: 1, type: "dir", path: path.join(home, "repository"), cipherPass: "", retentionFull: null, retentionDays: null },
    ]);
    expect(load({}, "/backups")[0]).toMatchObject({ type: "dir", path: "/backups" });
    expect(load({ RELEVO_REPO1_PATH: "/backups/" }, "/backups")[0]).toMatchObject({ path: "/backups" });
    expect(load({ RELEVO_REPO1_PATH: "/srv/repo" })[0]).toMatchObject({ path: "/srv/repo" });
    expect(() => load({ RELEVO_REPO1_PATH: "/srv/repo" }, "/elsewhere")).toThrow(
      expect.objectContaining({
        code: ErrorCode.InvalidConfig,
        message: expect.stringContaining("RELEVO_REPOSITORY names another"),
      }),
    );
  });

  test("an S3 repository with every variable; numbers may leave gaps; the list is by number", () => {
    const repositories = load({
      RELEVO_REPO3_TYPE: "s3",
      RELEVO_REPO3_S3_BUCKET: "relevo-backups",
      RELEVO_REPO3_S3_ENDPOINT: "https://s3.eu-west-3.amazonaws.com/",
      RELEVO_REPO3_S3_REGION: "eu-west-3",
      RELEVO_REPO3_S3_URI_STYLE: "path",
      RELEVO_REPO3_S3_PREFIX: "/clusters/prod/",
      RELEVO_REPO3_S3_ACCESS_KEY_ID: "AKIAEXAMPLE",
      RELEVO_REPO3_S3_SECRET_ACCESS_KEY: "secret-key-value",
      RELEVO_REPO3_S3_CA_FILE: "ca.pem",
      RELEVO_REPO3_S3_CHECKSUM: "on",
      RELEVO_REPO3_CIPHER_PASS: "a long enough cipher pass",
      RELEVO_REPO3_RETENTION_FULL: "4",
      RELEVO_REPO3_RETENTION_DAYS: "30",
    });
    expect(repositories.map((repository) => repository.index)).toEqual([1, 3]);
    expect(repositories[1]).toEqual({
      index: 3,
      type: "s3",
      bucket: "relevo-backups",
      endpoint: "https://s3.eu-west-3.amazonaws.com",
      region: "eu-west-3",
      uriStyle: "path",
      prefix: "clusters/prod/",
      accessKeyId: "AKIAEXAMPLE",
      secretAccessKey: "secret-key-value",
      caFile: path.resolve("ca.pem"),
      requestChecksums: true,
      cipherPass: "a long enough cipher pass",
      retentionFull: 4,
      retentionDays: 30,
    });
    // What messages and the API show: never the secret nor the pass.
    const shown = describeRepository(repositories[1]!);
    expect(shown).toBe("repo3 (s3: s3://relevo-backups/clusters/prod/ at https://s3.eu-west-3.amazonaws.com, encrypted)");
    expect(shown).not.toContain("secret-key-value");
    expect(shown).not.toContain("cipher pass");
    // Defaults: AWS's endpoint for the region, host-style, the SDK's credential chain, no SDK checksums.
    expect(load({ RELEVO_REPO2_TYPE: "s3", RELEVO_REPO2_S3_BUCKET: "bucket" })[1]).toMatchObject({
      endpoint: "",
      region: "us-east-1",
      uriStyle: "host",
      prefix: "",
      accessKeyId: "",
      requestChecksums: false,
    });
  });

  test("what is wrong is INVALID_CONFIG naming the variable, and a secret's value is never quoted back", () => {
    const s3 = { RELEVO_REPO2_TYPE: "s3", RELEVO_REPO2_S3_BUCKET: "bucket" };
    expectInvalid({ RELEVO_REPO2_TYPO: "x" }, "RELEVO_REPO2_TYPO");
    expectInvalid({ RELEVO_REPO0_PATH: "/x" }, "RELEVO_REPO0_PATH");
    expectInvalid({ RELEVO_REPO257_PATH: "/x" }, "RELEVO_REPO257_PATH");
    expectInvalid({ RELEVO_REPO02_PATH: "/x" }, "RELEVO_REPO02_PATH");
    expectInvalid({ RELEVO_REPO2_TYPE: "ftp" }, "RELEVO_REPO2_TYPE");
    expectInvalid({ RELEVO_REPO2_RETENTION_FULL: "2" }, "RELEVO_REPO2_PATH");
    expectInvalid({ RELEVO_REPO2_PATH: "/x", RELEVO_REPO2_S3_BUCKET: "bucket" }, "RELEVO_REPO2_S3_BUCKET");
    expectInvalid({ RELEVO_REPO2_TYPE: "s3" }, "RELEVO_REPO2_S3_BUCKET");
    expectInvalid({ ...s3, RELEVO_REPO2_S3_BUCKET: "Bad_Bucket" }, "RELEVO_REPO2_S3_BUCKET");
    expectInvalid({ ...s3, RELEVO_REPO2_S3_ENDPOINT: "http://10.0.0.5:9000" }, "RELEVO_REPO2_S3_ENDPOINT");
    expectInvalid({ ...s3, RELEVO_REPO2_S3_ENDPOINT: "https://user:pw@s3.example.com" }, "RELEVO_REPO2_S3_ENDPOINT", "pw@");
    expectInvalid({ ...s3, RELEVO_REPO2_S3_ENDPOINT: "ftp://s3.example.com" }, "RELEVO_REPO2_S3_ENDPOINT");
    expect(load({ ...s3, RELEVO_REPO2_S3_ENDPOINT: "http://127.0.0.1:9000", RELEVO_REPO2_S3_URI_STYLE: "path" })[1]).toMatchObject({
      endpoint: "http://127.0.0.1:9000",
    });
    expectInvalid({ ...s3, RELEVO_REPO2_S3_URI_STYLE: "virtual" }, "RELEVO_REPO2_S3_URI_STYLE");
    expectInvalid({ ...s3, RELEVO_REPO2_S3_PREFIX: "a/../b" }, "RELEVO_REPO2_S3_PREFIX");
    expectInvalid({ ...s3, RELEVO_REPO2_S3_SECRET_ACCESS_KEY: "only-the-secret" }, "RELEVO_REPO2_S3_ACCESS_KEY_ID", "only-the-secret");
    expectInvalid({ ...s3, RELEVO_REPO2_S3_ACCESS_KEY_ID: "AKIA" }, "RELEVO_REPO2_S3_SECRET_ACCESS_KEY");
    expectInvalid({ ...s3, RELEVO_REPO2_S3_CHECKSUM: "yes" }, "RELEVO_REPO2_S3_CHECKSUM");
    expectInvalid({ RELEVO_REPO1_CIPHER_PASS: "short-pass" }, "RELEVO_REPO1_CIPHER_PASS", "short-pass");
    expectInvalid(
      { RELEVO_REPO1_PATH: "/x", RELEVO_REPO1_S3_SECRET_ACCESS_KEY: "hidden-secret" },
      "RELEVO_REPO1_S3_SECRET_ACCESS_KEY",
      "hidden-secret",
    );
    expectInvalid({ RELEVO_REPO1_RETENTION_FULL: "0" }, "RELEVO_REPO1_RETENTION_FULL");
    // Typos of the numbered names are refused, not ignored (RELEVO_REPOSITORY is the old name of repository 1's path).
    expectInvalid({ RELEVO_REPO_1_PATH: "/x" }, "RELEVO_REPO_1_PATH");
    expectInvalid({ RELEVO_REPO1PATH: "/x" }, "RELEVO_REPO1PATH");
    // Host style in front of an address or localhost would ask DNS for <bucket>.<address>.
    expectInvalid({ ...s3, RELEVO_REPO2_S3_ENDPOINT: "http://localhost:9000" }, "RELEVO_REPO2_S3_URI_STYLE");
    expectInvalid({ ...s3, RELEVO_REPO2_S3_ENDPOINT: "https://10.0.0.5" }, "RELEVO_REPO2_S3_URI_STYLE");
    expect(load({ ...s3, RELEVO_REPO2_S3_ENDPOINT: "https://10.0.0.5", RELEVO_REPO2_S3_URI_STYLE: "path" })[1]).toMatchObject({
      uriStyle: "path",
    });
    // A secret is taken as given: a pass that ends in a space keeps it.
    expect(load({ RELEVO_REPO1_CIPHER_PASS: "  pass with spaces  " })[0]).toMatchObject({ cipherPass: "  pass with spaces  " });
    expectInvalid({ RELEVO_REPO1_RETENTION_DAYS: "7d" }, "RELEVO_REPO1_RETENTION_DAYS");
  });

  test("loadConfig takes every repository configured; repository 1 keeps RELEVO_REPOSITORY's place", () => {
    expect(loadConfig({ RELEVO_HOME: home, RELEVO_REPO1_PATH: "/srv/repo" }).repository).toBe("/srv/repo");
    const plain = loadConfig({ RELEVO_HOME: home, RELEVO_REPO1_RETENTION_FULL: "3" });
    expect(plain.repository).toBe(path.join(home, "repository"));
    expect(plain.repositories.map((repository) => repository.index)).toEqual([1]);
    const two = loadConfig({
      RELEVO_HOME: home,
      RELEVO_REPO1_TYPE: "s3",
      RELEVO_REPO1_S3_BUCKET: "bucket",
      RELEVO_REPO3_PATH: "/srv/third",
      RELEVO_REPO3_CIPHER_PASS: "a long enough cipher pass",
    });
    expect(two.repositories.map((repository) => [repository.index, repository.type])).toEqual([
      [1, "s3"],
      [3, "dir"],
    ]);
  });
});
