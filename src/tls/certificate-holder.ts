import { UnreachableCaseError } from "../errors";

/**
 * Something that holds a certificate issued by Relevo's CA and can be
 * re-issued and reloaded without a restart. A node's PostgreSQL server is
 * one (src/cluster/node-certificate.ts); Redis's server certificate and the
 * client certificates Relevo's own clients present plug in the same way:
 * re-issue from the CA as it is now, write, reload, check that the new one
 * is in use, and put the previous one back when it is not.
 */
export interface CertificateHolder {
  /** Its name in the record of issued certificates and in reports: `node:node1`. */
  readonly holder: string;
  renew(): Promise<RenewalOutcome>;
  /**
   * The certificate it holds now (PEM), for one held in memory rather than
   * recorded in the data home (the API's, a process's Redis client
   * certificate): what the expiry check and a CA rotation's finish read.
   */
  readonly held?: () => string;
  /** False for a certificate Relevo's CA did not issue (the operator's API certificate): renewed by re-reading, never awaited by a CA rotation. */
  readonly fromRelevoCa?: boolean;
  /**
   * A CA rotation's first step for a server that checks client
   * certificates (Redis): the CA bundle as it is now becomes its trust,
   * before any client presents a certificate of the new CA.
   */
  extendTrust?(): Promise<void>;
}

export type RenewalOutcome =
  /** The new certificate is in use (`serial`), checked after the reload. */
  | { readonly phase: "renewed"; readonly holder: string; readonly serial: string; readonly previousSerial: string | null }
  /** Not running: it gets a new certificate from the current CA when it next starts. */
  | { readonly phase: "pending"; readonly holder: string; readonly reason: string }
  /** The reload did not take the new certificate: the previous files were put back, it serves `serial` still. */
  | { readonly phase: "refused"; readonly holder: string; readonly reason: string; readonly serial: string | null }
  /** Not renewed for another reason (unreachable…); what it serves is unknown. */
  | { readonly phase: "failed"; readonly holder: string; readonly reason: string };

/** Renews each holder in turn (one reload at a time: never every server at once); every outcome, whatever fails. */
export async function renewAll(holders: readonly CertificateHolder[]): Promise<RenewalOutcome[]> {
  const outcomes: RenewalOutcome[] = [];
  for (const holder of holders) {
    outcomes.push(
      await holder.renew().catch((error: Error): RenewalOutcome => ({ phase: "failed", holder: holder.holder, reason: error.message })),
    );
  }
  return outcomes;
}

/** One line per outcome, for the CLI and the logs. Pure. */
export function describeOutcome(outcome: RenewalOutcome): string {
  switch (outcome.phase) {
    case "renewed":
      return `${outcome.holder}: serves ${outcome.serial}${outcome.previousSerial ? ` (was ${outcome.previousSerial})` : ""}`;
    case "pending":
      return `${outcome.holder}: ${outcome.reason}`;
    case "refused":
      return `${outcome.holder}: REFUSED, ${outcome.reason}; still serves ${outcome.serial ?? "its previous certificate"}`;
    case "failed":
      return `${outcome.holder}: FAILED, ${outcome.reason}`;
    default:
      throw new UnreachableCaseError(outcome);
  }
}
