#!/bin/bash
# The test image's entrypoint: the part of the official postgres image's entrypoint
# (subset: POSTGRES_USER/PASSWORD/DB, POSTGRES_INITDB_ARGS,
#  POSTGRES_HOST_AUTH_METHOD, /docker-entrypoint-initdb.d/*.sh|*.sql).
set -Eeo pipefail

# "docker run image -c port=5433" -> "postgres -c port=5433"
if [ "${1:0:1}" = '-' ]; then
	set -- postgres "$@"
fi

# Like the official image: --version, --help, -C … only print, they need no cluster.
wants_help() {
	local arg
	for arg; do
		case "$arg" in -'?'|--help|--describe-config|-V|--version|-C|-C*) return 0 ;; esac
	done
	return 1
}

if [ "$1" = 'postgres' ] && ! wants_help "$@"; then
	: "${PGDATA:=/var/lib/postgresql/data}"
	if [ "$(id -u)" = '0' ]; then
		mkdir -p "$PGDATA" /var/run/postgresql
		chown postgres:postgres "$PGDATA" /var/run/postgresql
		chmod 00700 "$PGDATA"
		chmod 03775 /var/run/postgresql
		# drop privileges; exec keeps PID 1
		exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
	fi

	if [ ! -s "$PGDATA/PG_VERSION" ]; then
		if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != 'trust' ]; then
			echo >&2 'error: database is uninitialized and superuser password is not specified.'
			echo >&2 '       set POSTGRES_PASSWORD or POSTGRES_HOST_AUTH_METHOD=trust'
			exit 1
		fi
		: "${POSTGRES_USER:=postgres}"
		: "${POSTGRES_DB:=$POSTGRES_USER}"
		if [ -n "$POSTGRES_PASSWORD" ]; then
			initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") $POSTGRES_INITDB_ARGS
		else
			initdb --username="$POSTGRES_USER" $POSTGRES_INITDB_ARGS
		fi
		echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
		auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
		printf '\nhost all all all %s\n' "$auth" >> "$PGDATA/pg_hba.conf"

		# temporary server on the unix socket only (like the official image)
		pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start
		export PGPASSWORD="$POSTGRES_PASSWORD"
		psql=(psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc --username "$POSTGRES_USER" -h /var/run/postgresql -p 5432)
		if [ "$POSTGRES_DB" != 'postgres' ]; then
			"${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<< 'CREATE DATABASE :"db";'
		fi
		for f in /docker-entrypoint-initdb.d/*; do
			case "$f" in
				*.sh)  echo "running $f"; . "$f" ;;
				*.sql) echo "running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
				*)     [ -e "$f" ] && echo "ignoring $f" ;;
			esac
		done
		unset PGPASSWORD
		pg_ctl -D "$PGDATA" -m fast -w stop
		echo 'PostgreSQL init process complete; ready for start up.'
	fi
fi

exec "$@"
