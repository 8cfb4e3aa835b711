import { Field, ObjectType, registerEnumType } from "type-graphql";

export enum RenewalPhaseGql {
  RENEWED = "renewed",
  PENDING = "pending",
  REFUSED = "refused",
  FAILED = "failed",
}
registerEnumType(RenewalPhaseGql, {
  name: "CertificateRenewalPhase",
  description:
    "RENEWED: the new certificate is in use, checked after the reload. PENDING: not running; it gets a certificate of the current CA at its next start. REFUSED: the server did not load the new certificate; its previous files were put back and it still serves the previous one. FAILED: not renewed for another reason (unreachable).",
});

export enum CaStepGql {
  KEPT = "kept",
  BEGUN = "begun",
  FINISHED = "finished",
}
registerEnumType(CaStepGql, {
  name: "CaRotationStep",
  description:
    "KEPT: the CA stayed (certificates re-issued by it). BEGUN: a new CA signs; the old one stays in every trust bundle until finishCaRotation. FINISHED: the old CA left every trust bundle.",
});

@ObjectType({ description: "One holder's certificate after a rotation." })
export class CertificateRenewal {
  @Field(() => String, { description: "Who holds it: node:<name>." })
  holder!: string;

  @Field(() => RenewalPhaseGql)
  phase!: RenewalPhaseGql;

  @Field(() => String, { nullable: true, description: "The serial it serves now (hexadecimal), when known." })
  serial!: string | null;

  @Field(() => String, { nullable: true, description: "The serial it served before a renewal." })
  previousSerial!: string | null;

  @Field(() => String, { nullable: true, description: "Why it was not renewed." })
  reason!: string | null;
}

@ObjectType({ description: "What rotateCertificates or finishCaRotation did." })
export class CertificateRotationReport {
  @Field(() => CaStepGql)
  ca!: CaStepGql;

  @Field(() => [CertificateRenewal])
  renewals!: CertificateRenewal[];

  @Field(() => [String], {
    nullable: true,
    description:
      "While a CA rotation is under way: the members not yet holding a certificate of the new CA (finishCaRotation waits for them).",
  })
  awaitingNewCa!: string[] | null;

  @Field(() => [String], {
    description:
      "After finishCaRotation: the holders whose renewal was refused or failed, whose trust may still hold the old CA until rotateCertificates renews them. Empty otherwise.",
  })
  oldCaTrustedBy!: string[];
}
