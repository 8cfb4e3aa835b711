import type { RelevoConfig } from "../config/config";
import { ErrorCode, RelevoError } from "../errors";
import type { EventLog } from "../events/event-log";
import type { ClusterEvent } from "../events/event-map";
import type { Logger } from "../log";
import type { NodeDriver, NodeRef } from "../nodes/node-driver";
import type { Credentials } from "../postgres/connection";
import { beginCaRotation, finishCaRotation } from "../tls/ca-rotation";
import { describeOutcome, renewAll, type CertificateHolder, type RenewalOutcome } from "../tls/certificate-holder";
import {
  certificateFacts,
  expiresSoon,
  nodeHolder,
  readIssuedByHolder,
  type CertificateFacts,
  type IssuedRecord,
} from "../tls/issued-certificates";
import type { LiveAuthority } from "../tls/live-authority";
import { caRotationsUnderWay } from "../tls/own-ca-files";
import { splitCertificates } from "../tls/pem-bundle";
import { nodeCertificateHolder } from "./node-certificate";

export interface CertificateRotationDeps {
  readonly config: Pick<RelevoConfig, "home" | "clusterName" | "tlsCaFile" | "tlsCaKeyFile" | "nodeTimeoutMs">;
  /** The nodes' CA: the members' certificates. */
  readonly ca: LiveAuthority;
  /** The services CA: the certificates of the holders beyond the members (Redis's, the API's). */
  readonly servicesCa: LiveAuthority;
  readonly driver: NodeDriver;
  /** The members, as membership keeps them (changed in place). */
  readonly nodes: readonly NodeRef[];
  readonly superuser: Credentials;
  readonly events: EventLog;
  readonly logger: Logger;
}

export type CaStep = "kept" | "begun" | "finished";

type ExpiringAction = ClusterEvent<"tls:expiring">["data"]["action"];

/**
 * How long before its end Relevo's own CA is rotated (begun) by the expiry
 * check: leaves live a year but never past their CA, so a CA in its last
 * year issues ever shorter leaves; three months leave the operator time to
 * hand clients the new ca.crt and finish.
 */
export const CA_ROTATION_LEAD_DAYS = 90;
const DAY_MS = 86_400_000;

export interface RotationReport {
  readonly ca: CaStep;
  readonly outcomes: readonly RenewalOutcome[];
  /** While a CA rotation is under way: the members not yet holding a certificate of the new CA (it cannot be finished before). */
  readonly awaiting: readonly string[] | null;
  /**
   * After a finish: the holders whose second renewal was refused or failed.
   * Their trust files (a member's `ssl_ca_file`, Redis's CA file) may
   * still hold the old CA beside the new one until a later `rotate`
   * renews them; empty otherwise.
   */
  readonly oldCaTrustedBy: readonly string[];
}

/**
 * `relevo certificates rotate` in the service: every holder of a
 * certificate re-issued from the CA as its files say now and reloaded, one
 * at a time; a CA rotation begun (`ca`) or finished on the way. One
 * rotation at a time in this service.
 */
export class CertificateRotation {
  private queue: Promise<unknown> = Promise.resolve();
  /** Holders beyond the members, renewed by every rotation after them: Redis's, the API's. */
  private readonly services: CertificateHolder[] = [];
  /** This instance's own certificates, renewed when another instance changed the CA's files (see followCaChange). */
  private readonly followers: CertificateHolder[] = [];

  constructor(private readonly deps: CertificateRotationDeps) {}

  /**
   * A holder beyond the members: `rotate`, renewed by every rotation and by
   * the expiry check; `followCa`, renewed when this instance finds that the
   * CA's files changed under it (another instance rotated).
   */
  include(holder: CertificateHolder, options: { readonly rotate: boolean; readonly followCa: boolean }): void {
    if (options.rotate) this.services.push(holder);
    if (options.followCa) this.followers.push(holder);
  }

  /**
   * After this instance re-read the CA's files that another instance
   * changed: the certificates only this instance holds (its API's, its
   * Redis client certificate) re-issued by the CA as it is now, so that
   * they are still trusted once the old CA goes.
   */
  followCaChange(): Promise<RenewalOutcome[]> {
    return this.serially(async () => {
      // While a CA rotation is under way (the services CA's file is a bundle) the old CA stays trusted everywhere:
      // this instance's certificates keep serving, and re-issuing them now could meet a Redis the rotating instance
      // has not yet given the bundle. They follow the finish, when the old CA goes. Judged by the file that was just
      // read, not by the rotation's record, which a finish removes only after rewriting the file.
      if (splitCertificates(this.deps.servicesCa.authority.certificatePem).length > 1) return [];
      const outcomes = await renewAll(this.followers);
      for (const outcome of outcomes) this.deps.logger.info({ outcome }, describeOutcome(outcome));
      return outcomes;
    });
  }

  /** Every certificate re-issued and reloaded; with `ca`, under a new CA first (see beginCaRotation). */
  rotate(options: { readonly ca: boolean }): Promise<RotationReport> {
    return this.serially(async () => {
      if (options.ca) await beginCaRotation(this.deps.config);
      // Re-read in any case: the operator may have replaced RELEVO_TLS_CA_FILE's files, or begun a CA rotation.
      await this.reloadCas();
      // Every member trusts the bundle before any server presents a certificate of the new CA: a replica's WAL
      // receiver reconnecting to a renewed primary then verifies it even without a cross certificate.
      await this.extendTrust();
      return this.renewEverything(options.ca ? "begun" : "kept");
    });
  }

  /**
   * Drops the old CA from every bundle once every member holds a
   * certificate of the new one (running members are renewed first);
   * PRECONDITION_FAILED naming those that do not (a stopped member gets
   * one at its next start).
   */
  finishCaRotation(): Promise<RotationReport> {
    return this.serially(async () => {
      await this.reloadCas();
      const before = await this.renewAll();
      // A renewal that failed or was refused may have left a member serving what no record shows: not finished over it.
      const troubled = before
        .filter((outcome) => outcome.phase === "failed" || outcome.phase === "refused")
        .map((outcome) => outcome.holder);
      const awaiting = [...new Set([...(await this.awaitingNewCa()), ...troubled])];
      if (awaiting.length > 0) {
        throw new RelevoError(
          ErrorCode.PreconditionFailed,
          `the old CA stays trusted until every member holds a certificate of the new one; not yet: ${awaiting.join(", ")} ` +
            `(a stopped member gets one when it starts; a refused or failed renewal is retried by \`relevo certificates rotate\`)`,
          { details: { awaiting, outcomes: before.map(describeOutcome) } },
        );
      }
      await finishCaRotation(this.deps.config);
      await this.reloadCas();
      // Again: the servers stop sending the new CA certified by the old, and their trust files lose the old CA.
      return this.renewEverything("finished");
    });
  }

  /**
   * The expiry check (at start and every few hours): Relevo's own CA
   * within CA_ROTATION_LEAD_DAYS of its end gets a CA rotation begun (the
   * old CA stays trusted beside the new one until the operator finishes
   * it: nothing breaks, and no leaf is cut short at the CA's end); a
   * configured CA within EXPIRY_WARNING_DAYS is reported. A member's
   * certificate is renewed (running) or left to its next start, and
   * reported either way.
   */
  async checkExpiry(now: Date = new Date(), options: { readonly shared: boolean } = { shared: true }): Promise<void> {
    // `shared` false: another instance checks the members, Redis and the CAs this interval; this one its own only.
    if (!options.shared) return this.checkHolders(this.followers, now);
    // Another instance may have finished or begun a rotation a moment ago: judge the CAs as their files are.
    await this.deps.ca.reloadIfChanged();
    await this.deps.servicesCa.reloadIfChanged();
    const cas = [
      ["ca", this.deps.ca.authority],
      ["services-ca", this.deps.servicesCa.authority],
    ] as const;
    // Relevo's own CAs only: a nodes' CA of RELEVO_TLS_CA_FILE is the operator's (reported below).
    const own = cas.filter(([, authority]) => !authority.configured);
    const due = own.filter(([, authority]) => authority.notAfter.getTime() - now.getTime() < CA_ROTATION_LEAD_DAYS * DAY_MS);
    // Begun only where it breaks nothing: Relevo's own CAs (a configured one is the operator's), none under way, and a
    // CA that may certify its successor (one of pathLength 0 gives no cross certificate: clients holding only the old
    // CA would fail at once).
    const mayBegin =
      due.length > 0 &&
      (await caRotationsUnderWay(this.deps.config.home)).length === 0 &&
      own.every(([, authority]) => authority.certifiesSuccessor);
    const begun =
      mayBegin &&
      (await this.rotate({ ca: true }).then(
        () => true,
        (error: Error) => {
          this.deps.logger.warn({ err: error.message }, "the CA's rotation was not begun");
          return false;
        },
      ));
    for (const [holder, authority] of cas) {
      const isDue = due.some(([dueHolder]) => dueHolder === holder);
      if (!(begun && isDue) && !expiresSoon(authority.notAfter, now)) continue;
      await this.expiring({
        holder,
        serial: certificateFacts(authority.signerPem).serial,
        notAfter: authority.notAfter.toISOString(),
        action: begun && isDue ? "rotation-begun" : "reported",
      });
    }
    await this.checkHolders([...this.allHolders(), ...this.followers.filter((holder) => !this.services.includes(holder))], now);
  }

  /** Each holder's certificate within EXPIRY_WARNING_DAYS of its end renewed (or left to its next start) and reported. */
  private async checkHolders(holders: readonly CertificateHolder[], now: Date): Promise<void> {
    const records = await readIssuedByHolder(this.deps.config.home);
    for (const holder of holders) {
      if (holder.fromRelevoCa === false) continue;
      const facts = heldFacts(holder, records);
      if (!facts || !expiresSoon(facts.notAfter, now)) continue;
      const [outcome] = await this.serially(() => renewAll([holder]));
      const action = outcome?.phase === "renewed" ? "renewed" : outcome?.phase === "pending" ? "at-next-start" : "renewal-failed";
      await this.expiring({ holder: holder.holder, serial: facts.serial, notAfter: facts.notAfter, action });
    }
  }

  private async expiring(data: { holder: string; serial: string; notAfter: string; action: ExpiringAction }): Promise<void> {
    await this.deps.events.emit({
      kind: "tls:expiring",
      severity: data.action === "renewed" ? "info" : "warning",
      node: data.holder.startsWith("node:") ? data.holder.slice("node:".length) : null,
      message: `the certificate of ${data.holder} (${data.serial}) expires at ${data.notAfter}: ${data.action}`,
      data,
    });
  }

  private holderOf(node: NodeRef): CertificateHolder {
    const { driver, superuser, config } = this.deps;
    return nodeCertificateHolder({ driver, superuser, timeoutMs: config.nodeTimeoutMs, home: config.home }, node);
  }

  /** The CA certificates as they are now beside every running member's certificate (see NodeDriver.extendTrust). */
  private async extendTrust(): Promise<void> {
    // Redis first: every instance's Redis client certificate depends on it.
    for (const holder of this.services) {
      try {
        await holder.extendTrust?.();
      } catch (error) {
        this.deps.logger.warn({ holder: holder.holder, err: (error as Error).message }, "the CA bundle was not given to this server");
      }
    }
    for (const node of this.deps.nodes) {
      try {
        if ((await this.deps.driver.state(node)).phase === "running") await this.deps.driver.extendTrust(node);
      } catch (error) {
        this.deps.logger.warn(
          { node: node.name, err: (error as Error).message },
          "the CA bundle was not written beside the node's certificate",
        );
      }
    }
  }

  /** The members' servers, then the service's own holders (Redis, the API): what a rotation renews, in that order. */
  private allHolders(): CertificateHolder[] {
    return [...this.deps.nodes.map((node) => this.holderOf(node)), ...this.services];
  }

  private renewAll(): Promise<RenewalOutcome[]> {
    return renewAll(this.allHolders());
  }

  private async renewEverything(ca: CaStep): Promise<RotationReport> {
    const outcomes = await this.renewAll();
    const awaiting = (await caRotationsUnderWay(this.deps.config.home)).length === 0 ? null : await this.awaitingNewCa();
    const names = (phase: RenewalOutcome["phase"]): string[] =>
      outcomes.filter((outcome) => outcome.phase === phase).map((outcome) => outcome.holder);
    const troubledHolders = [...names("refused"), ...names("failed")];
    const troubled = troubledHolders.length > 0;
    const oldCaTrustedBy = ca === "finished" ? troubledHolders : [];
    for (const outcome of outcomes) this.deps.logger.info({ outcome }, describeOutcome(outcome));
    await this.deps.events.emit({
      kind: "tls:rotated",
      severity: troubled ? "warning" : "info",
      node: null,
      message:
        `certificates rotated (CA ${ca}): ${outcomes.map(describeOutcome).join("; ")}` +
        (oldCaTrustedBy.length > 0
          ? `; the old CA may still be trusted by ${oldCaTrustedBy.join(", ")} until \`relevo certificates rotate\` renews them`
          : ""),
      data: {
        ca,
        renewed: names("renewed"),
        pending: names("pending"),
        refused: names("refused"),
        failed: names("failed"),
        oldCaTrustedBy,
      },
    });
    return { ca, outcomes, awaiting, oldCaTrustedBy };
  }

  /**
   * Holders whose certificate is not their CA's as it is now: a member by
   * its record (a stopped one too) against the nodes' CA, a service's
   * holder by what it holds (or its record) against the services CA. The
   * operator's own API certificate is not waited for.
   */
  private async awaitingNewCa(): Promise<string[]> {
    const signer = certificateFacts(this.deps.ca.authority.signerPem).subject;
    const servicesSigner = certificateFacts(this.deps.servicesCa.authority.signerPem).subject;
    const records = await readIssuedByHolder(this.deps.config.home);
    const members = this.deps.nodes.map((node) => nodeHolder(node.name)).filter((holder) => records.get(holder)?.issuer !== signer);
    const services = this.services
      .filter((holder) => holder.fromRelevoCa !== false)
      .filter((holder) => heldFacts(holder, records)?.issuer !== servicesSigner)
      .map((holder) => holder.holder);
    return [...members, ...services];
  }

  /** Both CAs read again from their files (a rotation changed them, or the operator replaced RELEVO_TLS_CA_FILE's). */
  private async reloadCas(): Promise<void> {
    await this.deps.ca.reload();
    await this.deps.servicesCa.reload();
  }

  private serially<T>(work: () => Promise<T>): Promise<T> {
    const next = this.queue.catch(() => undefined).then(work);
    this.queue = next;
    return next;
  }
}

/** What a holder holds now: its certificate in memory, else what the data home recorded it was last issued. */
function heldFacts(holder: CertificateHolder, records: ReadonlyMap<string, IssuedRecord>): CertificateFacts | undefined {
  return holder.held ? certificateFacts(holder.held()) : records.get(holder.holder);
}
