#!/usr/bin/env bash
#
# demo.sh: the README's main job (`make demo` runs it after tools/deps.sh).
#
# Builds the extension and the client library (`make`), installs them
# (`make install`, through sudo when not root), builds the demo program
# (examples/demo, an application of libidem), starts a throwaway cluster in
# test/tmp/demo/cluster (stopped again on any exit), creates the extension
# there and runs the demo, which prints its report:
#
#   1. N concurrent charge requests with the same key: one execution, N
#      identical responses, the waiters' wake times, one charge row
#   2. a handler killed (SIGKILL) before its commit: the retry takes over
#      with attempt 2 and completes once
#   3. the same key with another body: a mismatch (422)
#
# Exits with the demo's status: 0 when all its checks passed.
#
# Knobs: DEMO_REQUESTS (default 20), DEMO_HANDLER_MS (default 300),
# SKIP_BUILD=1 (use what is built and installed), KEEP_CLUSTER=1 (leave the
# cluster running afterwards, to look around with psql).

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

DEMO_REQUESTS=${DEMO_REQUESTS:-20}
DEMO_HANDLER_MS=${DEMO_HANDLER_MS:-300}
CLUSTER_SH=$ROOT/tools/cluster.sh
LOGDIR=$ROOT/test/tmp/demo
cluster_dir=
scratch=

PG_CONFIG=${PG_CONFIG:-pg_config}
PG_BINDIR=$("$PG_CONFIG" --bindir 2>/dev/null) || PG_BINDIR=
[[ -x $PG_BINDIR/psql ]] || PG_BINDIR=/usr/lib/postgresql/15/bin
export PG_CONFIG
export PATH=$PG_BINDIR:$PATH

sudo=()
if [[ $(id -u) -ne 0 ]]; then
	sudo=(sudo)
fi

started=$SECONDS

cleanup()
{
	if [[ -n $cluster_dir && ${KEEP_CLUSTER:-} == 1 ]]; then
		echo "demo: the cluster still runs (KEEP_CLUSTER=1): . $cluster_dir/env;" \
			"tools/cluster.sh stop $cluster_dir"
	elif [[ -n $cluster_dir ]]; then
		if bash "$CLUSTER_SH" stop "$cluster_dir" >/dev/null 2>&1; then
			echo "demo: stopped the cluster"
		else
			echo "demo: could not stop the cluster in $cluster_dir" >&2
		fi
		[[ -z $scratch ]] || rm -rf "$scratch"
	fi
	cluster_dir=
}
trap cleanup EXIT
demo_pid=
# shellcheck disable=SC2317 # called by the trap
interrupted()
{
	echo "demo: interrupted" >&2
	if [[ -n $demo_pid ]]; then
		kill -TERM "$demo_pid" 2>/dev/null
		wait "$demo_pid" 2>/dev/null
	fi
	exit 130
}
trap interrupted INT TERM

# step NAME LOG CMD...: runs CMD with its output in LOG, says how long it
# took; on failure shows the end of LOG and stops.
step()
{
	local name=$1 log=$2 t0=$SECONDS
	shift 2
	if "$@" >"$log" 2>&1; then
		printf 'demo: %-38s done in %ds\n' "$name" $((SECONDS - t0))
	else
		printf 'demo: %-38s FAILED (exit %d); the end of %s:\n' "$name" $? \
			"${log#"$ROOT"/}" >&2
		tail -n 30 "$log" | sed 's/^/    /' >&2
		exit 1
	fi
}

mkdir -p "$LOGDIR"

if [[ ${SKIP_BUILD:-} != 1 ]]; then
	step "build (make)" "$LOGDIR/build.log" make --no-print-directory
	step "install (${sudo[*]:+${sudo[*]} }make install)" "$LOGDIR/install.log" \
		"${sudo[@]}" make --no-print-directory install
fi
step "build the demo (examples/demo)" "$LOGDIR/demo-build.log" \
	make --no-print-directory -C examples/demo

# The cluster runs as an unprivileged user when we are root: when the
# repository's path is closed to that user, the cluster goes under /tmp.
user=$(bash "$CLUSTER_SH" user) || user=$(id -un)
cluster_dir=$LOGDIR/cluster
if [[ $user != "$(id -un)" ]] && ! runuser -u "$user" -- test -x "$LOGDIR"; then
	scratch=$(mktemp -d /tmp/idem-demo.XXXXXX)
	chmod 0755 "$scratch"
	cluster_dir=$scratch/cluster
fi
step "start a throwaway cluster" "$LOGDIR/cluster.log" \
	bash "$CLUSTER_SH" start "$cluster_dir"
# shellcheck disable=SC1091
. "$cluster_dir/env"
step "CREATE EXTENSION idempotency" "$LOGDIR/extension.log" \
	psql -XAtq -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION idempotency'
echo "demo: cluster in ${cluster_dir#"$ROOT"/}, port $PGPORT, as $user"

# In the background, so that an interrupt stops it at once (wait returns
# when a trapped signal arrives; the trap ends the program).
echo
timeout -k 5 120 examples/demo/build/demo -n "$DEMO_REQUESTS" -s "$DEMO_HANDLER_MS" &
demo_pid=$!
wait "$demo_pid"
rc=$?
demo_pid=
echo
if ((rc == 124 || rc == 137)); then
	echo "demo: the demo program ran out of time (120 s)" >&2
fi
cleanup
echo "demo: done in $((SECONDS - started))s (exit $rc)"
exit "$rc"
