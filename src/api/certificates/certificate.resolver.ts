import { Arg, Authorized, Mutation, Resolver } from "type-graphql";
import type { RotationReport } from "../../cluster/certificate-rotation";
import { UnreachableCaseError } from "../../errors";
import type { RenewalOutcome } from "../../tls/certificate-holder";
import type { ApiServices } from "../context";
import { CaStepGql, CertificateRenewal, CertificateRotationReport, RenewalPhaseGql } from "./certificate.type";

@Resolver()
export class CertificateResolver {
  constructor(private readonly services: ApiServices) {}

  @Authorized("operator")
  @Mutation(() => CertificateRotationReport, {
    description:
      "Re-issues every node's server certificate from the CA (its files re-read) and reloads each running node without a restart, checking that it serves the new one; a node that refuses it keeps its previous files (REFUSED). With ca: new CAs of Relevo's own first (the services CA alone beside a nodes' CA of RELEVO_TLS_CA_FILE, the operator's), the old ones kept in every trust bundle until finishCaRotation; PRECONDITION_FAILED while a CA rotation is under way.",
  })
  async rotateCertificates(
    @Arg("ca", () => Boolean, { defaultValue: false, description: "Rotate the CA itself (Relevo's own CA only)." }) ca: boolean,
  ): Promise<CertificateRotationReport> {
    return toReport(await this.services.certificates.rotate({ ca }));
  }

  @Authorized("operator")
  @Mutation(() => CertificateRotationReport, {
    description:
      "Ends a CA rotation: the old CA leaves every trust bundle and the servers' certificate chains. PRECONDITION_FAILED while a member does not hold a certificate of the new CA yet (a stopped one gets it at its next start), or when no CA rotation is under way.",
  })
  async finishCaRotation(): Promise<CertificateRotationReport> {
    return toReport(await this.services.certificates.finishCaRotation());
  }
}

function toReport(report: RotationReport): CertificateRotationReport {
  return {
    ca: report.ca as CaStepGql,
    renewals: report.outcomes.map(toRenewal),
    awaitingNewCa: report.awaiting ? [...report.awaiting] : null,
    oldCaTrustedBy: [...report.oldCaTrustedBy],
  };
}

function toRenewal(outcome: RenewalOutcome): CertificateRenewal {
  const base = { holder: outcome.holder, phase: outcome.phase as RenewalPhaseGql };
  switch (outcome.phase) {
    case "renewed":
      return { ...base, serial: outcome.serial, previousSerial: outcome.previousSerial, reason: null };
    case "refused":
      return { ...base, serial: outcome.serial, previousSerial: null, reason: outcome.reason };
    case "pending":
    case "failed":
      return { ...base, serial: null, previousSerial: null, reason: outcome.reason };
    default:
      throw new UnreachableCaseError(outcome);
  }
}
