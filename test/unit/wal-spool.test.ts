import { chmod, lstat, mkdir, readdir, symlink } from "node:fs/promises";
import path from "node:path";
import { ErrorCode } from "../../src/errors";
import { Repository, walSpoolDir } from "../../src/storage/repository";
import { unsafeAncestor, WalArchive } from "../../src/storage/wal-archive";
import { tempHome } from "../helpers/home";

describe("the WAL spool's parents (unsafeAncestor)", () => {
  const root = 0;
  test("root's directories, not writable by others, are safe", () => {
    expect(
      unsafeAncestor(
        [
          { path: "/srv/relevo", uid: 0, mode: 0o40711 },
          { path: "/srv", uid: 0, mode: 0o40755 },
        ],
        root,
      ),
    ).toBeNull();
  });

  test("a sticky world-writable directory (as /tmp) is safe: only an entry's owner renames it", () => {
    expect(unsafeAncestor([{ path: "/tmp", uid: 0, mode: 0o41777 }], root)).toBeNull();
  });

  test("a parent another user owns, or others may write without the sticky bit, is named", () => {
    expect(unsafeAncestor([{ path: "/home/pg", uid: 999, mode: 0o40700 }], root)).toBe("/home/pg is owned by uid 999");
    expect(unsafeAncestor([{ path: "/srv", uid: 0, mode: 0o40777 }], root)).toBe("/srv is writable by others (mode 777)");
    expect(unsafeAncestor([{ path: "/srv", uid: 0, mode: 0o40775 }], root)).toBe("/srv is writable by others (mode 775)");
  });
});

describe("the WAL spool on disk", () => {
  test("ensure() makes the spool 0700 in the data home and the repository root's alone (0700), with no wal/", async () => {
    const home = await tempHome("spool-ensure");
    const repository = new Repository(path.join(home, "repository"), null, { spoolDir: walSpoolDir(home) });
    await repository.ensure();
    expect(repository.spoolDir).toBe(path.join(home, "wal-spool"));
    expect((await lstat(repository.spoolDir)).mode & 0o7777).toBe(0o700);
    expect((await lstat(repository.root)).mode & 0o7777).toBe(0o700);
    expect(await readdir(repository.root)).not.toContain("wal");
  });

  test("a spool under a parent others may write is refused (DATA_DIR_NOT_OURS), nothing made", async () => {
    const home = await tempHome("spool-unsafe");
    const open = path.join(home, "open");
    await mkdir(open, { mode: 0o777 });
    await chmod(open, 0o777);
    await expect(new WalArchive(path.join(open, "wal-spool"), null).ensure()).rejects.toMatchObject({ code: ErrorCode.DataDirNotOurs });
    expect(await readdir(open)).toEqual([]);
  });

  test("a spool planted as a link is refused, never made or chowned through", async () => {
    const home = await tempHome("spool-link");
    const elsewhere = path.join(home, "elsewhere");
    await mkdir(elsewhere, { mode: 0o755 });
    await symlink(elsewhere, path.join(home, "wal-spool"));
    await expect(new WalArchive(walSpoolDir(home), null).ensure()).rejects.toMatchObject({ code: ErrorCode.DataDirNotOurs });
    expect((await lstat(elsewhere)).mode & 0o7777).toBe(0o755);
  });
});
