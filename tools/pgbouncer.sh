#!/usr/bin/env bash
#
# pgbouncer.sh: a throwaway PgBouncer in front of a test cluster.
#
#   tools/pgbouncer.sh start DIR MODE POOL_SIZE
#                       start a PgBouncer in DIR, pool_mode = MODE
#                       (transaction or session), default_pool_size =
#                       POOL_SIZE, in front of the cluster of
#                       $CLUSTER_DIR/env (else PGHOST/PGPORT)
#   tools/pgbouncer.sh stop DIR      stop it (safe to call twice, or on nothing)
#   tools/pgbouncer.sh status DIR    exit 0 if it is running
#
# Layout: DIR/pgbouncer.ini, DIR/userlist.txt (the auth_file),
# DIR/pgbouncer.log, DIR/pgbouncer.pid, DIR/sock (its unix socket
# directory; a symlink to a short directory under /tmp when DIR is too long
# for a socket path) and DIR/env, to be sourced by clients:
#
#   export PGHOST=DIR/sock PGPORT=... PGUSER=postgres PGDATABASE=postgres
#
# It listens on that socket directory and on 127.0.0.1, on the first free
# port from 56432 up (PGBOUNCER_PORT sets where to start), and runs as the
# cluster's OS user (tools/cluster.sh user; PgBouncer refuses to run as
# root).  Every database name goes to the cluster (a `*` entry).  Settings,
# chosen for tests that count what runs through a small pool:
#   auth_type = trust, with an auth_file naming the cluster's users:
#     postgres and app (a role the tests create), plus PGBOUNCER_USERS
#     (space separated) when set; PgBouncer admits no other user
#   reserve_pool_size = 0, so that the pool is exactly POOL_SIZE
#   max_client_conn = 200
#   server_reset_query = DISCARD ALL (what session mode runs when a client
#     leaves; transaction mode runs none)
#   ignore_startup_parameters = extra_float_digits (sent by JDBC and
#     others); libpq's application_name and client_encoding are parameters
#     PgBouncer keeps track of itself
#   admin_users = postgres: `psql -d pgbouncer -c 'SHOW POOLS'`
#
# Starting over an existing DIR stops whatever PgBouncer runs there and
# wipes it.  Users should stop it from a trap, as they stop their clusters.

set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROG=pgbouncer.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FIRST_PORT=${PGBOUNCER_PORT:-56432}
PORT_TRIES=200
PGBOUNCER=${PGBOUNCER:-/usr/sbin/pgbouncer}

die()
{
	echo "$PROG: $*" >&2
	exit 1
}

usage()
{
	echo "usage: $PROG start DIR MODE POOL_SIZE | stop DIR | status DIR" >&2
	exit 2
}

pid_of()
{
	local pidfile=$1/pgbouncer.pid
	[[ -r $pidfile ]] && head -n 1 "$pidfile"
}

is_running()
{
	local pid
	pid=$(pid_of "$1" 2>/dev/null) || return 1
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# The socket directory behind DIR/sock
sockdir_of()
{
	if [[ -L $1/sock ]]; then
		readlink "$1/sock"
	else
		printf '%s\n' "$1/sock"
	fi
}

# psql on PgBouncer's admin console of DIR (on PORT)
admin()
{
	local dir=$1 port=$2
	shift 2
	psql -XAtq -h "$(sockdir_of "$dir")" -p "$port" -U postgres -d pgbouncer "$@"
}

do_stop()
{
	local dir=$1 pid i
	if ! is_running "$dir"; then
		echo "$PROG: no pgbouncer running in $dir"
		return 0
	fi
	pid=$(pid_of "$dir")
	# SIGTERM: immediate shutdown (SIGINT would first wait for every
	# client to let go of its server connection)
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		kill -KILL "$pid" 2>/dev/null || true
		sleep 0.2
		echo "$PROG: killed the pgbouncer in $dir (pid $pid)"
	else
		echo "$PROG: stopped the pgbouncer in $dir"
	fi
	rm -f "$dir/pgbouncer.pid"
}

write_ini()
{
	local dir=$1 mode=$2 pool=$3 port=$4 sockdir=$5 backend_host=$6 backend_port=$7
	cat >"$dir/pgbouncer.ini" <<-EOF
		; Written by tools/pgbouncer.sh
		[databases]
		* = host=$backend_host port=$backend_port

		[pgbouncer]
		listen_addr = 127.0.0.1
		listen_port = $port
		unix_socket_dir = $sockdir
		auth_type = trust
		auth_file = $dir/userlist.txt
		admin_users = postgres
		stats_users = postgres
		pool_mode = $mode
		default_pool_size = $pool
		min_pool_size = 0
		reserve_pool_size = 0
		max_client_conn = 200
		server_reset_query = DISCARD ALL
		ignore_startup_parameters = extra_float_digits
		logfile = $dir/pgbouncer.log
		pidfile = $dir/pgbouncer.pid
	EOF
}

do_start()
{
	local dir=$1 mode=$2 pool=$3 user sockdir port tries backend_host backend_port
	local pguser pgdb u i

	case $mode in
		transaction | session | statement) ;;
		*) die "MODE must be transaction or session, not \"$mode\"" ;;
	esac
	[[ $pool =~ ^[1-9][0-9]*$ ]] || die "POOL_SIZE must be a positive integer, not \"$pool\""
	[[ -x $PGBOUNCER ]] || die "$PGBOUNCER not found (tools/deps.sh installs pgbouncer)"

	# The cluster to pool: $CLUSTER_DIR/env when there is one, else the
	# caller's PGHOST/PGPORT.
	if [[ -n ${CLUSTER_DIR:-} && -r $CLUSTER_DIR/env ]]; then
		# shellcheck disable=SC1091
		. "$CLUSTER_DIR/env"
	fi
	[[ -n ${PGHOST:-} && -n ${PGPORT:-} ]] ||
		die "no cluster: set CLUSTER_DIR (with DIR/env from tools/cluster.sh) or PGHOST and PGPORT"
	backend_host=$PGHOST
	backend_port=$PGPORT
	pguser=${PGUSER:-postgres}
	pgdb=${PGDATABASE:-postgres}

	if ! command -v psql >/dev/null 2>&1; then
		PATH=/usr/lib/postgresql/15/bin:$PATH
	fi

	user=$(bash "$HERE/cluster.sh" user)

	if [[ -e $dir ]]; then
		do_stop "$dir" >/dev/null
		if [[ -L $dir/sock ]]; then
			rm -rf "$(readlink "$dir/sock")"
		fi
		rm -rf "$dir"
	fi
	mkdir -p "$dir"
	if ((${#dir} + 20 > 100)); then
		sockdir=$(mktemp -d /tmp/idem-bouncer.XXXXXX)
		ln -s "$sockdir" "$dir/sock"
	else
		sockdir=$dir/sock
		mkdir -p "$sockdir"
	fi

	# trust still wants every user named in the auth_file
	for u in postgres app $pguser ${PGBOUNCER_USERS:-}; do
		printf '"%s" ""\n' "$u"
	done | sort -u >"$dir/userlist.txt"

	chmod 0755 "$dir" "$sockdir"
	chown -R "$user:" "$dir" "$sockdir"
	[[ -L $dir/sock ]] && chown -h "$user:" "$dir/sock"
	run_as "$user" test -w "$dir" ||
		die "user $user cannot write to $dir (is a parent directory closed to it?)"

	port=$FIRST_PORT
	for ((tries = 0; tries < PORT_TRIES; tries++, port++)); do
		port_in_use "$port" && continue
		write_ini "$dir" "$mode" "$pool" "$port" "$sockdir" "$backend_host" "$backend_port"
		chown "$user:" "$dir/pgbouncer.ini"
		: >"$dir/pgbouncer.log"
		chown "$user:" "$dir/pgbouncer.log"
		run_as "$user" "$PGBOUNCER" -d -q "$dir/pgbouncer.ini" >>"$dir/pgbouncer.log" 2>&1 || true
		# -d returns once it has forked: wait until the admin console
		# answers, or the daemon has died
		for ((i = 0; i < 100; i++)); do
			admin "$dir" "$port" -c 'SHOW VERSION' >/dev/null 2>&1 && break
			((i > 5)) && ! is_running "$dir" && break
			sleep 0.1
		done
		# Lost a race for the port: PgBouncer only warns when the TCP
		# port is taken and its unix socket is not, and dies when neither
		# can be had.  Either way, the next port.
		if grep -qE "cannot listen on 127\.0\.0\.1:$port|Address already in use" "$dir/pgbouncer.log"; then
			do_stop "$dir" >/dev/null 2>&1 || true
			continue
		fi
		if is_running "$dir" && admin "$dir" "$port" -c 'SHOW VERSION' >/dev/null 2>&1; then
			break
		fi
		tail -n 20 "$dir/pgbouncer.log" >&2
		do_stop "$dir" >/dev/null 2>&1 || true
		die "pgbouncer did not start in $dir (see $dir/pgbouncer.log)"
	done
	((tries < PORT_TRIES)) ||
		die "no free port in $FIRST_PORT..$((FIRST_PORT + PORT_TRIES - 1))"

	{
		printf 'export PGHOST=%q\n' "$sockdir"
		printf 'export PGPORT=%q\n' "$port"
		printf 'export PGUSER=%q\n' "$pguser"
		printf 'export PGDATABASE=%q\n' "$pgdb"
	} >"$dir/env"
	chmod 0644 "$dir/env"
	echo "$PROG: started pgbouncer ($mode pooling, pool of $pool) in $dir as $user" \
		"on port $port (socket $sockdir), in front of $backend_host:$backend_port;" \
		". $dir/env to use it"
}

case ${1:-} in
	start)
		[[ $# -eq 4 ]] || usage
		do_start "$(absdir "$2")" "$3" "$4"
		;;
	stop)
		dir=$(absdir "${2:-}")
		do_stop "$dir"
		if [[ -L $dir/sock ]]; then
			rm -rf "$(readlink "$dir/sock")"
			rm -f "$dir/sock"
		fi
		;;
	status)
		is_running "$(absdir "${2:-}")"
		;;
	*)
		usage
		;;
esac
