import { expect } from "@jest/globals";
import { describeReport, printRotationReport, type ReportRow } from "../../src/cli/certificate-commands";
import { ErrorCode } from "../../src/errors";
import { describeOutcome } from "../../src/tls/certificate-holder";

describe("what `relevo certificates rotate` prints", () => {
  const renewed = { holder: "node:node1", phase: "RENEWED", serial: "0B", previousSerial: "0A", reason: null } as const;

  test("one line per node, then the CA rotation's state; a clean rotation succeeds", () => {
    const lines: string[] = [];
    const report: ReportRow = {
      ca: "BEGUN",
      renewals: [
        renewed,
        { holder: "node:node2", phase: "PENDING", serial: null, previousSerial: null, reason: "stopped: at its next start" },
      ],
      awaitingNewCa: ["node:node2"],
      oldCaTrustedBy: [],
    };
    printRotationReport(report, { out: (line) => lines.push(line), terminal: false });
    expect(lines).toEqual([
      "node:node1: renewed, serves 0B (was 0A)",
      "node:node2: stopped: at its next start",
      "a new CA signs; the old one stays trusted beside it until `relevo certificates finish-ca-rotation`",
      "not yet on the new CA: node:node2 (a stopped member gets its certificate when it starts)",
    ]);
  });

  test("a refused reload is printed with what the node still serves, and the command fails with TLS_RELOAD_REFUSED", () => {
    const lines: string[] = [];
    const report: ReportRow = {
      ca: "KEPT",
      renewals: [renewed, { holder: "node:node2", phase: "REFUSED", serial: "0C", previousSerial: null, reason: "not loaded" }],
      awaitingNewCa: null,
      oldCaTrustedBy: [],
    };
    expect(() => printRotationReport(report, { out: (line) => lines.push(line), terminal: false })).toThrow(
      expect.objectContaining({ code: ErrorCode.TlsReloadRefused, message: expect.stringContaining("node:node2") }),
    );
    expect(lines).toEqual(describeReport(report));
    expect(lines[1]).toBe("node:node2: REFUSED: not loaded; still serves 0C");
    expect(describeOutcome({ phase: "refused", holder: "node:node2", reason: "not loaded", serial: "0C" })).toBe(
      "node:node2: REFUSED, not loaded; still serves 0C",
    );
  });

  test("a finish whose renewal failed names who may still trust the old CA, and the command fails", () => {
    const lines: string[] = [];
    const report: ReportRow = {
      ca: "FINISHED",
      renewals: [renewed, { holder: "node:node2", phase: "FAILED", serial: null, previousSerial: null, reason: "unreachable" }],
      awaitingNewCa: null,
      oldCaTrustedBy: ["node:node2"],
    };
    expect(() => printRotationReport(report, { out: (line) => lines.push(line), terminal: false })).toThrow(
      expect.objectContaining({ code: ErrorCode.CommandFailed }),
    );
    expect(lines).toEqual([
      "node:node1: renewed, serves 0B (was 0A)",
      "node:node2: FAILED: unreachable",
      "CA rotation finished, but node:node2 may still trust the old CA (not renewed): run `relevo certificates rotate` once they are reachable",
    ]);
    expect(lines.join("\n")).not.toContain("trusted no more");
  });
});
