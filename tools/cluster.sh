#!/usr/bin/env bash
#
# cluster.sh: a throwaway PostgreSQL cluster for the tests.
#
#   tools/cluster.sh start DIR   create a new cluster in DIR and start it
#   tools/cluster.sh stop DIR    stop it (safe to call twice, or on nothing)
#   tools/cluster.sh status DIR  exit 0 if it is running
#   tools/cluster.sh user        print the user the clusters run as
#
# Layout: DIR/data (the cluster), DIR/sock (unix socket directory),
# DIR/log/postgresql.log (the server log) and DIR/env, to be sourced:
#
#   export PGHOST=DIR/sock PGPORT=... PGUSER=postgres PGDATABASE=postgres
#
# (When DIR is too long for a unix socket path, DIR/sock is a symlink to a
# short directory under /tmp and PGHOST names that directory.)
#
# The server listens on the socket and on 127.0.0.1, on the first free port
# from 54320 up (CLUSTER_PORT sets where to start), with trust
# authentication and a superuser named postgres.  initdb refuses to run as
# root, so when called as root the cluster runs as the `postgres` system
# user (or `idemtest`, created when there is no `postgres` user) and DIR is
# handed to that user.
#
# Settings: see write_conf below.  CLUSTER_OPTS adds more, appended to
# postgresql.conf so they win: items separated by newlines or `;`, and an
# item without quotes may hold several `name=value` words, e.g.
#   CLUSTER_OPTS='max_connections=200 fsync=off' tools/cluster.sh start DIR
#   CLUSTER_OPTS="log_line_prefix='%m [%p] '" tools/cluster.sh start DIR
#
# Starting over an existing DIR stops whatever runs there and wipes it.

set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROG=cluster.sh
FIRST_PORT=${CLUSTER_PORT:-54320}
PORT_TRIES=200

die()
{
	echo "$PROG: $*" >&2
	exit 1
}

usage()
{
	echo "usage: $PROG start DIR | stop DIR | status DIR | user" >&2
	exit 2
}

# The server's programs: pg_config's bindir when it has initdb, else the
# Debian path of PostgreSQL 15.
find_bindir()
{
	local pgc=${PG_CONFIG:-pg_config} dir=
	if command -v "$pgc" >/dev/null 2>&1; then
		dir=$("$pgc" --bindir 2>/dev/null) || dir=
	fi
	if [[ -z $dir || ! -x $dir/initdb ]]; then
		dir=/usr/lib/postgresql/15/bin
	fi
	[[ -x $dir/initdb && -x $dir/pg_ctl ]] ||
		die "initdb/pg_ctl not found (looked in pg_config --bindir and $dir)"
	printf '%s\n' "$dir"
}

# The user the server runs as: ourselves, or when we are root an
# unprivileged user, created if need be.
cluster_user()
{
	if [[ $(id -u) -ne 0 ]]; then
		id -un
	elif id postgres >/dev/null 2>&1; then
		echo postgres
	else
		if ! id idemtest >/dev/null 2>&1; then
			useradd --system --user-group --no-create-home \
				--home-dir /nonexistent --shell /usr/sbin/nologin idemtest ||
				die "could not create user idemtest"
		fi
		echo idemtest
	fi
}

write_conf()
{
	local conf=$1 port=$2 sockdir=$3 line item
	{
		echo
		echo "# Added by tools/cluster.sh"
		echo "listen_addresses = '127.0.0.1'"
		echo "port = $port"
		echo "unix_socket_directories = '$sockdir'"
		echo "unix_socket_permissions = 0777"
		echo "max_connections = 150"
		echo "fsync = on"
		echo "log_min_messages = warning"
		echo "shared_preload_libraries = ''"
		echo "logging_collector = off"
		echo "log_line_prefix = '%m [%p] %q%a '"
		echo "lc_messages = 'C'"
		if [[ -n ${CLUSTER_OPTS:-} ]]; then
			echo "# CLUSTER_OPTS"
			while IFS= read -r line; do
				[[ -n ${line//[[:space:]]/} ]] || continue
				if [[ $line == *\'* || $line == *\"* ]]; then
					printf '%s\n' "$line"
				else
					for item in $line; do
						printf '%s\n' "$item"
					done
				fi
			done <<<"${CLUSTER_OPTS//;/$'\n'}"
		fi
	} >>"$conf"
}

pid_of()
{
	local pidfile=$1/data/postmaster.pid
	[[ -r $pidfile ]] && head -n 1 "$pidfile"
}

# True when the postmaster of DIR runs.
is_running()
{
	local pid
	pid=$(pid_of "$1" 2>/dev/null) || return 1
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

do_stop()
{
	local dir=$1 bindir user
	if ! is_running "$dir"; then
		echo "$PROG: no server running in $dir"
		return 0
	fi
	bindir=$(find_bindir)
	user=$(stat -c %U "$dir/data")
	if run_as "$user" "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 60 \
		stop >/dev/null 2>&1; then
		echo "$PROG: stopped the server in $dir"
		return 0
	fi
	echo "$PROG: fast shutdown failed, trying immediate" >&2
	if run_as "$user" "$bindir/pg_ctl" -D "$dir/data" -m immediate -w -t 30 \
		stop >/dev/null 2>&1; then
		echo "$PROG: stopped the server in $dir (immediate)"
		return 0
	fi
	# Last resort: the postmaster's process id.
	local pid
	pid=$(pid_of "$dir") || true
	if [[ $pid =~ ^[0-9]+$ ]]; then
		kill -QUIT "$pid" 2>/dev/null || true
		sleep 1
		kill -KILL "$pid" 2>/dev/null || true
	fi
	if is_running "$dir"; then
		die "could not stop the server in $dir (pid $pid)"
	fi
	echo "$PROG: killed the server in $dir"
}

do_start()
{
	local dir=$1 bindir user sockdir port tries log
	bindir=$(find_bindir)
	user=$(cluster_user)

	if [[ -e $dir ]]; then
		do_stop "$dir" >/dev/null
		if [[ -L $dir/sock ]]; then
			rm -rf "$(readlink "$dir/sock")"
		fi
		rm -rf "$dir"
	fi
	mkdir -p "$dir/log"

	# A unix socket path is limited to 107 bytes: with a long DIR, put the
	# socket in a short directory under /tmp and point DIR/sock at it.
	if ((${#dir} + 20 > 100)); then
		sockdir=$(mktemp -d /tmp/idem-sock.XXXXXX)
		ln -s "$sockdir" "$dir/sock"
	else
		sockdir=$dir/sock
		mkdir -p "$sockdir"
	fi
	chmod 0755 "$dir" "$dir/log" "$sockdir"
	chown -R "$user:" "$dir" "$sockdir"
	chown -h "$user:" "$dir/sock"

	if ! run_as "$user" test -w "$dir"; then
		die "user $user cannot write to $dir (is a parent directory closed to it?)"
	fi

	log=$dir/log/initdb.log
	if ! run_as "$user" "$bindir/initdb" -D "$dir/data" -U postgres \
		-A trust -E UTF8 --locale=C --no-sync >"$log" 2>&1; then
		cat "$log" >&2
		die "initdb failed"
	fi
	cp "$dir/data/postgresql.conf" "$dir/data/postgresql.conf.initdb"

	port=$FIRST_PORT
	for ((tries = 0; tries < PORT_TRIES; tries++, port++)); do
		if port_in_use "$port" || [[ -e /tmp/.s.PGSQL.$port.lock ]]; then
			continue
		fi
		cp "$dir/data/postgresql.conf.initdb" "$dir/data/postgresql.conf"
		write_conf "$dir/data/postgresql.conf" "$port" "$sockdir"
		chown "$user:" "$dir/data/postgresql.conf"
		if run_as "$user" "$bindir/pg_ctl" -D "$dir/data" \
			-l "$dir/log/postgresql.log" -w -t 60 start >/dev/null 2>&1; then
			break
		fi
		# Lost a race for the port: try the next one.  Anything else is
		# fatal.
		if is_running "$dir" ||
			! grep -qiE 'could not (bind|create any TCP/IP|create lock file)' \
				"$dir/log/postgresql.log" 2>/dev/null; then
			tail -n 20 "$dir/log/postgresql.log" >&2 || true
			do_stop "$dir" >/dev/null 2>&1 || true
			die "the server in $dir did not start"
		fi
		: >"$dir/log/postgresql.log"
	done
	((tries < PORT_TRIES)) ||
		die "no free port in $FIRST_PORT..$((FIRST_PORT + PORT_TRIES - 1))"

	{
		printf 'export PGHOST=%q\n' "$sockdir"
		printf 'export PGPORT=%q\n' "$port"
		printf 'export PGUSER=postgres\n'
		printf 'export PGDATABASE=postgres\n'
	} >"$dir/env"
	chmod 0644 "$dir/env"
	echo "$PROG: started a server in $dir as $user on port $port" \
		"(socket $sockdir); . $dir/env to use it"
}

case ${1:-} in
	start)
		do_start "$(absdir "${2:-}")"
		;;
	stop)
		do_stop "$(absdir "${2:-}")"
		;;
	status)
		is_running "$(absdir "${2:-}")"
		;;
	user)
		cluster_user
		;;
	*)
		usage
		;;
esac
