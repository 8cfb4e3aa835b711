import type { RelevoConfig } from "../config/config";
import { loadMembers } from "../cluster/membership";
import { ErrorCode, isRelevoError, RelevoError } from "../errors";
import { caFiles, readTrustedCa, type CaRole } from "../tls/certificate-authority";
import { certificateFacts, nodeHolder, readIssuedByHolder, type CertificateFacts, type IssuedRecord } from "../tls/issued-certificates";
import { readCaRotation } from "../tls/own-ca-files";
import { splitCertificates } from "../tls/pem-bundle";
import { callApi } from "./api-client";
import type { Output } from "./commands";

const REPORT_FIELDS = "ca renewals { holder phase serial previousSerial reason } awaitingNewCa oldCaTrustedBy";

interface RenewalRow {
  holder: string;
  phase: "RENEWED" | "PENDING" | "REFUSED" | "FAILED";
  serial: string | null;
  previousSerial: string | null;
  reason: string | null;
}

export interface ReportRow {
  ca: "KEPT" | "BEGUN" | "FINISHED";
  renewals: RenewalRow[];
  awaitingNewCa: string[] | null;
  oldCaTrustedBy: string[];
}

/** The report's lines: one per holder, then the CA rotation's state. Pure. */
export function describeReport(report: ReportRow): string[] {
  const lines = report.renewals.map((row) => {
    switch (row.phase) {
      case "RENEWED":
        return `${row.holder}: renewed, serves ${row.serial ?? "?"}${row.previousSerial ? ` (was ${row.previousSerial})` : ""}`;
      case "PENDING":
        return `${row.holder}: ${row.reason ?? "pending"}`;
      case "REFUSED":
        return `${row.holder}: REFUSED: ${row.reason ?? ""}; still serves ${row.serial ?? "its previous certificate"}`;
      case "FAILED":
        return `${row.holder}: FAILED: ${row.reason ?? ""}`;
    }
  });
  if (report.ca === "BEGUN")
    lines.push("a new CA signs; the old one stays trusted beside it until `relevo certificates finish-ca-rotation`");
  if (report.ca === "FINISHED") {
    lines.push(
      report.oldCaTrustedBy.length === 0
        ? "CA rotation finished: the old CA is trusted no more"
        : `CA rotation finished, but ${report.oldCaTrustedBy.join(", ")} may still trust the old CA (not renewed): ` +
            "run `relevo certificates rotate` once they are reachable",
    );
  }
  if (report.awaitingNewCa !== null) {
    lines.push(
      report.awaitingNewCa.length === 0
        ? "every member, Redis and the API hold certificates of the new CA: `relevo certificates finish-ca-rotation` may drop the old one"
        : `not yet on the new CA: ${report.awaitingNewCa.join(", ")} (a stopped member gets its certificate when it starts)`,
    );
  }
  return lines;
}

/** Prints the report; a holder that refused or failed its renewal makes the command fail (after every line is out). */
export function printRotationReport(row: ReportRow, output: Output): void {
  for (const line of describeReport(row)) output.out(line);
  const refused = row.renewals.filter((renewal) => renewal.phase === "REFUSED").map((renewal) => renewal.holder);
  const failed = row.renewals.filter((renewal) => renewal.phase === "FAILED").map((renewal) => renewal.holder);
  if (refused.length > 0) {
    throw new RelevoError(
      ErrorCode.TlsReloadRefused,
      `${refused.join(", ")} refused the new certificate and still serve the previous one: see the node's PostgreSQL log`,
    );
  }
  if (failed.length > 0) throw new RelevoError(ErrorCode.CommandFailed, `${failed.join(", ")} not renewed: see above`);
}

/** `relevo certificates rotate [--ca]`: through the running service, which reloads the nodes and its own clients' trust. */
export async function certificatesRotateCommand(config: RelevoConfig, options: { ca: boolean }, output: Output): Promise<void> {
  const { rotateCertificates } = await callApi<{ rotateCertificates: ReportRow }>(
    config,
    `mutation($ca: Boolean!) { rotateCertificates(ca: $ca) { ${REPORT_FIELDS} } }`,
    { ca: options.ca },
  );
  printRotationReport(rotateCertificates, output);
}

export async function certificatesFinishCaRotationCommand(config: RelevoConfig, output: Output): Promise<void> {
  const { finishCaRotation } = await callApi<{ finishCaRotation: ReportRow }>(config, `mutation { finishCaRotation { ${REPORT_FIELDS} } }`);
  printRotationReport(finishCaRotation, output);
}

/** One CA's trust file: its certificates (the first signs; during a CA rotation the old one follows). */
export interface CaListing {
  readonly caFile: string;
  readonly authorities: readonly (CertificateFacts & { readonly role: "signs" | "trusted" })[];
  readonly caRotationSince: string | null;
}

/** The nodes' CA at the top level; the services CA (the API's and Redis's certificates) beside it. */
export interface CertificateListing extends CaListing {
  /** Null in a data home the service has not started in since the services CA exists (the next start makes it). */
  readonly servicesCa: CaListing | null;
  /** What the members were last issued (null: nothing recorded yet, e.g. never started since TLS). */
  readonly members: readonly { readonly name: string; readonly certificate: IssuedRecord | null }[];
  /** What the service's own servers were last issued (by the services CA): Relevo's Redis (`redis:server`). */
  readonly services: readonly IssuedRecord[];
}

/** `relevo certificates list`: from the data home, the service running or not. */
export async function certificatesListCommand(config: RelevoConfig, options: { json: boolean }, output: Output): Promise<void> {
  const records = await readIssuedByHolder(config.home);
  const listing: CertificateListing = {
    ...(await listCa(config, "nodes")),
    servicesCa: await listCa(config, "services").catch((error: Error) => {
      if (isRelevoError(error) && error.code === ErrorCode.PreconditionFailed) return null; // no services CA yet
      throw error;
    }),
    members: (await loadMembers(config)).map((node) => ({ name: node.name, certificate: records.get(nodeHolder(node.name)) ?? null })),
    services: [...records.values()].filter((record) => !record.holder.startsWith("node:")),
  };
  if (options.json) output.out(JSON.stringify(listing, null, 2));
  else for (const line of formatListing(listing)) output.out(line);
}

async function listCa(config: RelevoConfig, role: CaRole): Promise<CaListing> {
  const trust = await readTrustedCa(config, role);
  return {
    caFile: trust.file,
    authorities: splitCertificates(trust.pem).map((pem, index) => ({ ...certificateFacts(pem), role: index === 0 ? "signs" : "trusted" })),
    caRotationSince: caFiles(config, role).configured ? null : ((await readCaRotation(config.home, role))?.startedAt ?? null),
  };
}

/** Pure. */
export function formatListing(listing: CertificateListing): string[] {
  const lines: string[] = [];
  const describeCa = (what: string, ca: CaListing): void => {
    lines.push(`${what} ${ca.caFile}${ca.caRotationSince ? ` (CA rotation under way since ${ca.caRotationSince})` : ""}`);
    for (const authority of ca.authorities) {
      lines.push(
        `  CA ${authority.role === "signs" ? "(signs)" : "(trusted)"} ${authority.subject}  serial ${authority.serial}  notAfter ${authority.notAfter}`,
      );
    }
  };
  describeCa("CA file", listing);
  if (listing.servicesCa === null) lines.push("services CA: none yet (made at the next `relevo up`)");
  else describeCa("services CA file", listing.servicesCa);
  const describe = (certificate: IssuedRecord): string =>
    `${certificate.holder}  ${certificate.subject}  SANs ${certificate.subjectAltNames.join(", ")}  serial ${certificate.serial}  ` +
    `notAfter ${certificate.notAfter}  issuer ${certificate.issuer}`;
  for (const member of listing.members) {
    lines.push(
      member.certificate === null
        ? `${nodeHolder(member.name)}  no certificate recorded (issued at its next start)`
        : describe(member.certificate),
    );
  }
  for (const service of listing.services) lines.push(describe(service));
  return lines;
}
