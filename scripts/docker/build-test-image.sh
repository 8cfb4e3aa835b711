#!/bin/bash
# Builds the test image relevo-test/postgres:15 without pulling anything: a
# root filesystem assembled from this machine's installed Debian PostgreSQL 15
# packages and the libraries they link, `docker import`ed, with the official
# postgres image's layout where a driver relies on it (PGDATA, the postgres
# user as uid 999, an entrypoint that runs the server as PID 1, SIGINT to stop
# = fast shutdown). JIT (LLVM, +150 MB) is left out unless WITH_JIT=1.
# Needs a running Docker engine and root; scripts/setup.sh test runs it when
# the image is missing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/relevo-image-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/rootfs
IMAGE=${IMAGE:-relevo-test/postgres:15}
PGBIN=/usr/lib/postgresql/15/bin

rm -rf "$ROOT"
mkdir -p "$ROOT"/{usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,etc,tmp,root,dev,proc,sys,run,var/run,usr/local/bin,docker-entrypoint-initdb.d}
# Debian 12 is merged-/usr
ln -s usr/bin "$ROOT/bin"; ln -s usr/sbin "$ROOT/sbin"
ln -s usr/lib "$ROOT/lib"; ln -s usr/lib64 "$ROOT/lib64"
chmod 1777 "$ROOT/tmp"

# copy one path (file or symlink) to the same canonical location in ROOT
put() {
	local src=$1 dir
	dir=$(realpath "$(dirname "$src")")
	mkdir -p "$ROOT$dir"
	cp -a "$src" "$ROOT$dir/"
}
# copy dereferenced (for libraries referenced by soname symlink)
put_deref() {
	local src=$1 dir
	dir=$(realpath "$(dirname "$src")")
	mkdir -p "$ROOT$dir"
	[ -e "$ROOT$dir/$(basename "$src")" ] || cp -L "$src" "$ROOT$dir/"
}

# 1. package contents (without docs/man/translations)
for pkg in postgresql-15 postgresql-client-15 libpq5 coreutils dash bash util-linux grep sed findutils; do
	dpkg -L "$pkg" | while read -r f; do
		case "$f" in /usr/share/doc/*|/usr/share/man/*|/usr/share/locale/*|/usr/share/lintian/*|/usr/share/bash-completion/*|/usr/share/info/*|/etc/init.d/*) continue;;
			*/llvmjit*|*/lib/bitcode/*) [ "${WITH_JIT:-0}" = 1 ] || continue;; esac
		# skip the merged-/usr top-level symlinks (/bin, /lib, ...) themselves
		if [ -L "$f" ] && [ "$(dirname "$f")" = / ]; then continue; fi
		if [ -L "$f" ] || [ -f "$f" ]; then put "$f"; fi
	done
done
ln -sf dash "$ROOT/usr/bin/sh"

# 2. shared libraries of every ELF we copied (recursive via ldd)
find "$ROOT" -type f \( -perm -u+x -o -name '*.so*' \) -print0 |
	xargs -0 file -N | grep -E 'ELF .*(executable|shared object)' | cut -d: -f1 |
	sed "s|^$ROOT||" | sort -u | while read -r f; do
		ldd "$f" 2>/dev/null | awk '/=> \//{print $3} /^[ \t]*\/lib64\//{print $1}'
	done | sort -u > "$WORK/libs.txt"
while read -r lib; do put_deref "$lib"; done < "$WORK/libs.txt"

# 3. locale, tzdata, users
mkdir -p "$ROOT/usr/lib/locale"; cp -a /usr/lib/locale/C.utf8 "$ROOT/usr/lib/locale/"
mkdir -p "$ROOT/usr/share"; cp -a /usr/share/zoneinfo "$ROOT/usr/share/"
cat > "$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/bash
postgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat > "$ROOT/etc/group" <<'EOF'
root:x:0:
postgres:x:999:
nogroup:x:65534:
EOF
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' > "$ROOT/etc/nsswitch.conf"
touch "$ROOT/etc/hosts" "$ROOT/etc/resolv.conf" "$ROOT/etc/hostname"
ln -sf /usr/share/zoneinfo/Etc/UTC "$ROOT/etc/localtime"

# 4. postgres directories (as in the official image)
mkdir -p "$ROOT/var/lib/postgresql/data" "$ROOT/var/run/postgresql"
chown -R 999:999 "$ROOT/var/lib/postgresql" "$ROOT/var/run/postgresql"
chmod 1777 "$ROOT/var/lib/postgresql/data"
chmod 3777 "$ROOT/var/run/postgresql"
install -m 0755 "$HERE/docker-entrypoint.sh" "$ROOT/usr/local/bin/docker-entrypoint.sh"

# 5. smoke test with chroot before importing
chroot "$ROOT" /usr/lib/postgresql/15/bin/postgres --version
chroot "$ROOT" /usr/lib/postgresql/15/bin/psql --version

# 6. import
tar -C "$ROOT" --numeric-owner -cf - . | docker import \
	--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/postgresql/15/bin' \
	--change 'ENV PGDATA=/var/lib/postgresql/data' \
	--change 'ENV LANG=C.UTF-8' \
	--change 'ENV PG_MAJOR=15' \
	--change 'VOLUME /var/lib/postgresql/data' \
	--change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
	--change 'CMD ["postgres"]' \
	--change 'EXPOSE 5432' \
	- "$IMAGE-base"

# 7. docker import --change does not accept STOPSIGNAL (daemon 20.10):
#    add it with a one-line Dockerfile (no registry access needed).
#    The label records what the image was built from (RELEVO_BUILD, see
#    scripts/setup.sh): a change of these scripts or of the PostgreSQL
#    packages makes setup.sh build it again.
printf 'FROM %s\nSTOPSIGNAL SIGINT\nLABEL org.relevo.build=%s\n' "$IMAGE-base" "${RELEVO_BUILD:-unknown}" | docker build -q -t "$IMAGE" -
