import type { RelevoConfig } from "../config/config";
import { describeRepository, type RepositorySettings } from "../config/repository-config";
import { ErrorCode, RelevoError } from "../errors";
import type { Logger } from "../log";
import { checkRepository, type RepositoryCheck } from "../repository/check-repository";
import { openObjectStore } from "../repository/open-store";
import type { Output } from "./commands";

/** A repository as `repo list --json` shows it: where and how, never a credential or the cipher pass. Pure. */
export function repositoryListing(settings: RepositorySettings): Record<string, unknown> {
  const common = {
    index: settings.index,
    type: settings.type,
    description: describeRepository(settings),
    encrypted: settings.cipherPass !== "",
    retentionFull: settings.retentionFull,
    retentionDays: settings.retentionDays,
  };
  if (settings.type === "dir") return { ...common, path: settings.path };
  return {
    ...common,
    bucket: settings.bucket,
    endpoint: settings.endpoint === "" ? null : settings.endpoint,
    region: settings.region,
    uriStyle: settings.uriStyle,
    prefix: settings.prefix,
    credentials: settings.accessKeyId === "" ? "the AWS SDK's default chain" : "RELEVO_REPO<n>_S3_ACCESS_KEY_ID",
  };
}

/** `relevo repo list [--json]`: the repositories the configuration names (read from it: no service needed). */
export function repoListCommand(config: RelevoConfig, options: { json: boolean }, output: Output): void {
  if (options.json) {
    output.out(JSON.stringify(config.repositories.map(repositoryListing), null, 2));
    return;
  }
  for (const settings of config.repositories) {
    const retention = [
      settings.retentionFull === null ? null : `${settings.retentionFull} full`,
      settings.retentionDays === null ? null : `${settings.retentionDays} days`,
    ].filter((part) => part !== null);
    output.out(`${describeRepository(settings)}${retention.length > 0 ? `; keeps ${retention.join(" and ")}` : ""}`);
  }
}

/**
 * `relevo repo check [--repo N] [--json]`: each repository's store (or
 * one) written, read, listed and cleaned through by a probe object (see
 * checkRepository), from this host with this configuration: what to fix
 * before the service uses it. Fails with the first failure's code.
 */
export async function repoCheckCommand(
  config: RelevoConfig,
  options: { readonly repo?: string; readonly json: boolean },
  output: Output,
  logger: Logger,
): Promise<void> {
  const chosen = chosenRepositories(config, options.repo);
  const results: Array<{ settings: RepositorySettings; check: RepositoryCheck }> = [];
  for (const settings of chosen) {
    const opened = await openObjectStore(settings, { home: config.home, logger }).then(
      (store) => ({ store, error: null }),
      (error: unknown) => ({ store: null, error: error as RelevoError }),
    );
    if (!opened.store) {
      results.push({ settings, check: { steps: [{ step: "write", ok: false, detail: opened.error.message }], failure: opened.error } });
      continue;
    }
    try {
      const keys = { cipherPass: settings.cipherPass, variable: `RELEVO_REPO${settings.index}_CIPHER_PASS` };
      results.push({ settings, check: await checkRepository(opened.store, { keys }) });
    } finally {
      await opened.store.close();
    }
  }
  if (options.json) {
    output.out(
      JSON.stringify(
        results.map(({ settings, check }) => ({
          index: settings.index,
          description: describeRepository(settings),
          ok: check.failure === null,
          code: check.failure?.code ?? null,
          steps: check.steps,
        })),
        null,
        2,
      ),
    );
  } else {
    for (const { settings, check } of results) {
      output.out(`${describeRepository(settings)}: ${check.failure === null ? "ok" : `FAILED [${check.failure.code}]`}`);
      for (const step of check.steps) output.out(`  ${step.ok ? "ok  " : "FAIL"} ${step.step.padEnd(6)} ${step.detail}`);
    }
  }
  const failed = results.find((result) => result.check.failure !== null);
  if (failed) throw failed.check.failure!;
}

function chosenRepositories(config: RelevoConfig, repo: string | undefined): readonly RepositorySettings[] {
  if (repo === undefined) return config.repositories;
  const index = Number(repo);
  const found = config.repositories.find((settings) => settings.index === index);
  if (!found) {
    throw new RelevoError(
      ErrorCode.BadUserInput,
      `--repo ${repo}: no such repository; configured: ${config.repositories.map((settings) => settings.index).join(", ")}`,
    );
  }
  return [found];
}
