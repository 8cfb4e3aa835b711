import { readFile } from "node:fs/promises";
import type { TrustAnchors } from "../postgres/connection";
import { CertificateAuthority, type CaSettings } from "./certificate-authority";

/**
 * A CA a running service issues and trusts with (one per role: the nodes',
 * the services'), re-read when a rotation changed its files. Everything that connects to a node reads `trust` at
 * each new connection (a TLS session already open stays as it is), and the
 * drivers' certificate source reads `authority` at each issue, so a
 * rotation reaches them without a restart.
 */
export class LiveAuthority {
  readonly trust: TrustAnchors;
  private readonly followers: Array<() => Promise<void>> = [];

  constructor(
    private current: CertificateAuthority,
    private readonly settings: CaSettings,
  ) {
    const live = (): CertificateAuthority => this.current;
    this.trust = {
      get pem(): string {
        return live().certificatePem;
      },
    };
  }

  get authority(): CertificateAuthority {
    return this.current;
  }

  /** Reads the CA's files again (a rotation changed them, or the operator replaced RELEVO_TLS_CA_FILE's). */
  async reload(): Promise<CertificateAuthority> {
    this.current = await CertificateAuthority.load(this.settings, { role: this.current.role });
    return this.current;
  }

  /**
   * Reloads when the trust file changed: another instance on this data
   * home began or finished a CA rotation (both rewrite ca.crt). True when
   * it reloaded; then every follower is told (see onChangedElsewhere).
   */
  async reloadIfChanged(): Promise<boolean> {
    const text = await readFile(this.current.certificateFile, "utf8").catch(() => null);
    if (text === null || text === this.current.certificatePem) return false;
    await this.reload();
    // Not awaited: a follower may queue behind a rotation in progress, which may itself be issuing through here.
    for (const follower of this.followers) void follower();
    return true;
  }

  /**
   * `follower` is started after each reload reloadIfChanged makes (not
   * awaited; it handles its own failures): what this process holds of the
   * CA it had (its own certificates) follows.
   */
  onChangedElsewhere(follower: () => Promise<void>): void {
    this.followers.push(follower);
  }
}
