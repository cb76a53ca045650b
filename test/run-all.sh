#!/usr/bin/env bash
#
# run-all.sh: the test command (`make test` runs it after tools/deps.sh).
#
# Builds the extension with warnings as errors, installs it, starts a
# throwaway cluster in test/tmp/cluster (stopped again on any exit), runs
# every suite there is, going on after a failure, and ends with one line:
#
#   N passed, M failed, K skipped
#
# exiting non-zero when M > 0.  A suite that crashes (ends non-zero with no
# failure counted, or runs out of time) counts as one failure.  A skip (a
# check that cannot run here: a tool or a right is missing) is counted as
# a skip, never as a pass; so is a suite or TAP script skipped as a whole.
#
# The suites, in order (SUITES=regress,isolation,suites,tap picks some):
#   regress     pg_regress on REGRESS (sql/ + expected/), via make installcheck
#   isolation   pg_isolation_regress on ISOLATION (test/isolation/specs)
#   suites      each test/suites/*.sh, which prints its own "N passed, M failed,
#               K skipped" (see test/lib.sh; the older "N passed, M failed"
#               is read too, and a suite that printed "1..0 # SKIP reason"
#               or ran nothing counts as one skip); the extension is created
#               in the cluster's postgres database before they run
#   tap         test/t/*.pl with prove and PostgreSQL::Test::Cluster; from the
#               raw TAP of each script, a "plan skip_all" script counts as
#               one skip and each "ok N # skip" test as a skip
# pg_regress and isolation failures print their regression.diffs.
#
# Other knobs: SKIP_BUILD=1 (use what is installed), KEEP_CLUSTER=1 (leave
# the cluster running afterwards), CLUSTER_OPTS (extra server settings, see
# tools/cluster.sh), TEST_TIME_LIMIT (seconds for the whole run, default 1500,
# 0 = none), SUITE_TIMEOUT (seconds per step, default 600).

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

SUITES=${SUITES:-regress,isolation,suites,tap}
TEST_TIME_LIMIT=${TEST_TIME_LIMIT:-1500}
SUITE_TIMEOUT=${SUITE_TIMEOUT:-600}
TMP=$ROOT/test/tmp		# logs
WORK=$TMP			# what the unprivileged user must reach: see pick_work
CLUSTER_SH=$ROOT/tools/cluster.sh

passed=0
failed=0
skipped=0
problems=()
cluster_dir=
scratch=()
started=$SECONDS

want() { [[ ,$SUITES, == *,"$1",* ]]; }

banner() { printf '\n==> %s\n' "$*"; }

note_problem()
{
	problems+=("$1")
	echo "!!! $1"
}

# The one closing line; nothing may be printed after it.
finish()
{
	stop_cluster
	if ((${#problems[@]} > 0)); then
		echo
		echo "Problems:"
		printf '  %s\n' "${problems[@]}"
	fi
	if ((failed > 0 || ${#problems[@]} > 0)); then
		echo
		echo "$passed passed, $failed failed, $skipped skipped"
		exit 1
	fi
	# Scratch directories outside the repository are kept for a look only
	# when something failed.
	if ((${#scratch[@]} > 0)); then
		rm -rf "${scratch[@]}"
	fi
	echo
	echo "$passed passed, $failed failed, $skipped skipped"
	exit 0
}

stop_cluster()
{
	if [[ -n $cluster_dir && ${KEEP_CLUSTER:-} == 1 ]]; then
		echo "run-all: the cluster still runs (KEEP_CLUSTER=1): . $cluster_dir/env;" \
			"tools/cluster.sh stop $cluster_dir" >&2
		cluster_dir=
	elif [[ -n $cluster_dir ]]; then
		bash "$CLUSTER_SH" stop "$cluster_dir" >/dev/null 2>&1 ||
			echo "run-all: could not stop the cluster in $cluster_dir" >&2
		cluster_dir=
	fi
}

# shellcheck disable=SC2317 # called by the traps below
interrupted()
{
	echo "run-all: interrupted by SIG$1" >&2
	stop_cluster
	exit 130
}

trap stop_cluster EXIT
trap 'interrupted INT' INT
trap 'interrupted TERM' TERM

sudo=()
if [[ $(id -u) -ne 0 ]]; then
	sudo=(sudo)
fi

PG_CONFIG=${PG_CONFIG:-pg_config}
PG_BINDIR=$("$PG_CONFIG" --bindir 2>/dev/null) || PG_BINDIR=
[[ -x $PG_BINDIR/psql ]] || PG_BINDIR=/usr/lib/postgresql/15/bin
PG_PKGLIBDIR=$("$PG_CONFIG" --pkglibdir 2>/dev/null) || PG_PKGLIBDIR=/usr/lib/postgresql/15/lib
export PG_CONFIG PG_BINDIR
export PATH=$PG_BINDIR:$PATH
export IDEM_ROOT=$ROOT

# Seconds left for a step: the smaller of SUITE_TIMEOUT and what is left
# of TEST_TIME_LIMIT.  Prints 0 when time is up.
step_timeout()
{
	local left
	if ((TEST_TIME_LIMIT <= 0)); then
		echo "$SUITE_TIMEOUT"
		return
	fi
	left=$((TEST_TIME_LIMIT - (SECONDS - started)))
	((left < 0)) && left=0
	if ((left < SUITE_TIMEOUT)); then
		echo "$left"
	else
		echo "$SUITE_TIMEOUT"
	fi
}

# A variable of the Makefile, as make sees it.
# shellcheck disable=SC2016 # $(...) is for make
make_var()
{
	make -s --no-print-directory -f Makefile \
		-f <(printf '_run_all_print:\n\t@echo $(%s)\n' "$1") _run_all_print
}

# run_as USER CMD...: CMD as the unprivileged user the clusters run as.
run_as()
{
	local user=$1
	shift
	if [[ $user == "$(id -un)" ]]; then
		"$@"
	else
		runuser -u "$user" -- "$@"
	fi
}

# Servers and poolers that a suite or a TAP test started under DIR and left
# running (it timed out or died): stopped, so that they hold no port or
# memory.
stop_stray_servers()
{
	local dir=$1 pidfile data pid
	[[ -d $dir ]] || return 0
	while IFS= read -r pidfile; do
		data=$(dirname "$pidfile")
		pid=$(head -n 1 "$pidfile" 2>/dev/null) || continue
		if [[ ! $pid =~ ^[0-9]+$ ]] || ! kill -0 "$pid" 2>/dev/null; then
			continue
		fi
		echo "run-all: stopping a server left running in $data"
		run_as "$(stat -c %U "$data")" "$PG_BINDIR/pg_ctl" -D "$data" \
			-m immediate -w -t 30 stop >/dev/null 2>&1 ||
			kill -KILL "$pid" 2>/dev/null || true
	done < <(find "$dir" -name postmaster.pid 2>/dev/null)
	# and PgBouncers (tools/pgbouncer.sh)
	while IFS= read -r pidfile; do
		data=$(dirname "$pidfile")
		pid=$(head -n 1 "$pidfile" 2>/dev/null) || continue
		if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
			echo "run-all: stopping a pgbouncer left running in $data"
			bash "$ROOT/tools/pgbouncer.sh" stop "$data" >/dev/null 2>&1 ||
				kill -KILL "$pid" 2>/dev/null || true
		fi
	done < <(find "$dir" -name pgbouncer.pid 2>/dev/null)
}

# Count pg_regress's per-test lines ("test x ... ok", "... FAILED") in a log
# of one step, print the diffs of a failed run.
tally_pg_regress()
{
	local name=$1 log=$2 rc=$3 stamp=$4 ok bad diffs
	ok=$(grep -cE '\.\.\. +ok( |$)' "$log")
	bad=$(grep -cE '\.\.\. +(FAILED|failed)' "$log")
	passed=$((passed + ok))
	failed=$((failed + bad))
	echo "--- $name: $ok ok, $bad failed (exit $rc)"
	if ((rc == 124 || rc == 137)); then
		failed=$((failed + 1))
		note_problem "$name: timed out (counted as one failure)"
	elif ((rc != 0 && bad == 0)); then
		failed=$((failed + 1))
		note_problem "$name: exited $rc with no failed test (counted as one failure); see $log"
	fi
	if ((rc != 0 || bad > 0)); then
		diffs=$(find "$ROOT" -path "$TMP" -prune -o -name regression.diffs -size +0 \
			-newer "$stamp" -print 2>/dev/null)
		if [[ -n $diffs ]]; then
			while IFS= read -r f; do
				banner "$f"
				head -n 2000 "$f"
			done <<<"$diffs"
		fi
	fi
}

# pg_regress or pg_isolation_regress through make installcheck; the other
# list is emptied on make's command line so each runs alone and both run.
run_installcheck()
{
	local name=$1 list_var=$2 other_var=$3 tests t log stamp rc
	tests=$(make_var "$list_var") || tests=
	if [[ -z ${tests// /} ]]; then
		echo "--- $name: no tests ($list_var is empty)"
		return
	fi
	t=$(step_timeout)
	if ((t <= 0)); then
		failed=$((failed + 1))
		note_problem "$name: not run, out of time (counted as one failure)"
		return
	fi
	log=$TMP/$name.log
	stamp=$TMP/$name.stamp
	: >"$stamp"
	timeout -k 10 "$t" make -s --no-print-directory installcheck \
		"$other_var=" TAP_TESTS= 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	tally_pg_regress "$name" "$log" "$rc" "$stamp"
}

run_suite_scripts()
{
	local s name log t rc line p f k
	local -a scripts=()
	shopt -s nullglob
	scripts=("$ROOT"/test/suites/*.sh)
	shopt -u nullglob
	if ((${#scripts[@]} == 0)); then
		echo "--- suites: none in test/suites"
		return
	fi
	mkdir -p "$TMP/suites" "$WORK/suites"
	for s in "${scripts[@]}"; do
		name=suites/$(basename "$s")
		banner "$name"
		t=$(step_timeout)
		if ((t <= 0)); then
			failed=$((failed + 1))
			note_problem "$name: not run, out of time (counted as one failure)"
			continue
		fi
		log=$TMP/suites/$(basename "$s" .sh).log
		IDEM_TMP=$WORK/suites/$(basename "$s" .sh) \
			timeout -k 10 "$t" bash "$s" </dev/null 2>&1 | tee "$log" |
			sed -u 's/^/    /'
		rc=${PIPESTATUS[0]}
		stop_stray_servers "$WORK/suites/$(basename "$s" .sh)"
		# "N passed, M failed, K skipped" (lib.sh) or the older
		# "N passed, M failed"
		line=$(grep -E '^[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$' "$log" | tail -n 1)
		if [[ -z $line ]] && ((rc == 0)) && grep -qiE '^1\.\.0( |$)' "$log"; then
			# TAP's skip_all from a suite that printed no counts
			skipped=$((skipped + 1))
			echo "--- $name: skipped as a whole: $(grep -iE -m 1 '^1\.\.0' "$log")"
			continue
		fi
		if [[ -z $line ]]; then
			failed=$((failed + 1))
			if ((rc == 124 || rc == 137)); then
				note_problem "$name: timed out after ${t}s (counted as one failure)"
			else
				note_problem "$name: exited $rc without its 'N passed, M failed, K skipped' line (counted as one failure)"
			fi
			continue
		fi
		read -r p f k < <(sed -E 's/^([0-9]+) passed, ([0-9]+) failed(, ([0-9]+) skipped)?$/\1 \2 \4/' <<<"$line")
		k=${k:-0}
		if ((p + f + k == 0 && rc == 0)); then
			# ran nothing: it was skipped, not passed
			k=1
		fi
		passed=$((passed + p))
		failed=$((failed + f))
		skipped=$((skipped + k))
		echo "--- $name: $p ok, $f failed, $k skipped (exit $rc)"
		if ((rc != 0 && f == 0)); then
			failed=$((failed + 1))
			note_problem "$name: exited $rc with no failed test (counted as one failure)"
		elif ((rc == 0 && f > 0)); then
			note_problem "$name: counted $f failures but exited 0"
		fi
	done
}

# tally_tap_skips DUMPDIR LOG: the skips of a prove run, from the raw TAP
# that TAP::Harness wrote under DUMPDIR (PERL_TEST_HARNESS_DUMP_TAP).
# Prints "SKIPPED_TESTS SKIPPED_FILES": the top-level "ok N # skip" lines
# (part of prove's Tests=) and the scripts whose plan is "1..0 # skip"
# (skip_all: no tests).  Without a dump, the skip_all scripts are read off
# prove's "t/x.pl .. skipped: reason" lines.
tally_tap_skips()
{
	local dump=$1 log=$2 tests=0 files=0 f
	if [[ -d $dump ]] && [[ -n $(find "$dump" -type f -print -quit) ]]; then
		while IFS= read -r f; do
			if grep -qiE '^1\.\.0[[:space:]]*#[[:space:]]*skip' "$f"; then
				files=$((files + 1))
			fi
			tests=$((tests + $(grep -ciE '^ok([[:space:]]+[0-9]+)?[^#]*#[[:space:]]*skip' "$f")))
		done < <(find "$dump" -type f)
	else
		files=$(grep -cE '^[^ ]+ \.+ skipped:' "$log")
	fi
	echo "$tests $files"
}

run_tap()
{
	local user tapdir srcdir perl_dir pg_regress log t rc files tests bad ok
	local skipped_tests skipped_files
	local -a tests_found=()
	shopt -s nullglob
	tests_found=("$ROOT"/test/t/*.pl)
	shopt -u nullglob
	if ((${#tests_found[@]} == 0)); then
		echo "--- tap: no tests in test/t"
		return
	fi
	if ! command -v prove >/dev/null 2>&1; then
		failed=$((failed + 1))
		note_problem "tap: prove not found (counted as one failure)"
		return
	fi
	t=$(step_timeout)
	if ((t <= 0)); then
		failed=$((failed + 1))
		note_problem "tap: not run, out of time (counted as one failure)"
		return
	fi
	user=$(bash "$CLUSTER_SH" user)
	perl_dir=$PG_PKGLIBDIR/pgxs/src/test/perl
	pg_regress=$PG_PKGLIBDIR/pgxs/src/test/regress/pg_regress
	tapdir=$WORK/tap
	stop_stray_servers "$tapdir"
	rm -rf "$tapdir"
	mkdir -p "$tapdir"
	srcdir=$ROOT
	# PostgreSQL::Test::Cluster runs initdb, so prove runs as the
	# unprivileged user, who must be able to read the tests: when the
	# repository is closed to it, it gets a copy.
	if [[ $WORK != "$TMP" ]]; then
		srcdir=$tapdir/src
		mkdir -p "$srcdir"
		tar -C "$ROOT" --exclude=./test/tmp -cf - . | tar -C "$srcdir" -xf -
	fi
	chown -R "$user:" "$tapdir"
	log=$TMP/tap.log
	local -a as_user=()
	if [[ $user != "$(id -un)" ]]; then
		as_user=(runuser -u "$user" --)
	fi
	# The TAP clusters take initdb's locale from the environment: make it
	# UTF-8 (as tools/cluster.sh's) whatever the caller's, not SQL_ASCII.
	timeout -k 10 "$t" "${as_user[@]}" env -C "$srcdir/test" \
		-u LC_ALL -u LC_CTYPE -u LC_COLLATE LANG=C.UTF-8 \
		PATH="$PATH" \
		PERL5LIB="$perl_dir${PERL5LIB:+:$PERL5LIB}" \
		PG_REGRESS="$pg_regress" \
		TESTDIR="$tapdir" \
		IDEM_ROOT="$srcdir" \
		PERL_TEST_HARNESS_DUMP_TAP="$tapdir/raw" \
		prove -I "$perl_dir" -I "$srcdir/test" "${tests_found[@]#"$ROOT"/test/}" \
		2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	stop_stray_servers "$tapdir"
	files=$(sed -nE 's/^Files=([0-9]+), Tests=([0-9]+).*/\1/p' "$log" | tail -n 1)
	tests=$(sed -nE 's/^Files=([0-9]+), Tests=([0-9]+).*/\2/p' "$log" | tail -n 1)
	# Each script in prove's "Test Summary Report" failed: by its count of
	# failed tests, or as one failure when it died or broke its plan.
	bad=$(sed -nE 's/^[^ ].* \(Wstat: [0-9]+.* Tests: [0-9]+ Failed: ([0-9]+)\)$/\1/p' "$log" |
		awk '{ n += ($1 > 0 ? $1 : 1) } END { print n + 0 }')
	if [[ -z $tests ]]; then
		failed=$((failed + 1))
		note_problem "tap: prove exited $rc without its summary (counted as one failure); see $log"
		return
	fi
	read -r skipped_tests skipped_files < <(tally_tap_skips "$tapdir/raw" "$log")
	ok=$((tests - bad - skipped_tests))
	((ok < 0)) && ok=0
	passed=$((passed + ok))
	failed=$((failed + bad))
	skipped=$((skipped + skipped_tests + skipped_files))
	echo "--- tap: $files files, $ok ok, $bad failed," \
		"$((skipped_tests + skipped_files)) skipped ($skipped_files scripts skipped as a whole) (exit $rc)"
	if ((rc != 0 && bad == 0)); then
		failed=$((failed + 1))
		note_problem "tap: prove exited $rc with no failed test (a script died or planned more; counted as one failure)"
	fi
}

mkdir -p "$TMP"
chmod 0755 "$TMP"

# Clusters, the suites' scratch directories and the TAP tests belong to the
# unprivileged user the clusters run as (when we are root): when the
# repository's path is closed to that user (a clone under /root), they go
# to a directory under /tmp instead of test/tmp.
IDEM_TEST_USER=$(bash "$CLUSTER_SH" user) || IDEM_TEST_USER=$(id -un)
export IDEM_TEST_USER
if ! run_as "$IDEM_TEST_USER" test -x "$TMP"; then
	WORK=$(mktemp -d /tmp/idem-test.XXXXXX)
	chmod 0755 "$WORK"
	if [[ ${KEEP_CLUSTER:-} != 1 ]]; then
		scratch+=("$WORK")
	fi
	echo "run-all: $TMP is closed to $IDEM_TEST_USER; clusters and scratch files go to $WORK"
fi

if [[ ${SKIP_BUILD:-} != 1 ]]; then
	banner "build (warnings are errors)"
	if ! make -s --no-print-directory clean all COPT=-Werror; then
		failed=$((failed + 1))
		note_problem "build: make all failed (counted as one failure)"
		finish
	fi
	banner "install"
	if ! "${sudo[@]}" make -s --no-print-directory install; then
		failed=$((failed + 1))
		note_problem "install: make install failed (counted as one failure)"
		finish
	fi
fi

banner "cluster"
cluster_dir=$WORK/cluster
if ! bash "$CLUSTER_SH" start "$cluster_dir"; then
	failed=$((failed + 1))
	note_problem "cluster: could not start a server (counted as one failure)"
	cluster_dir=
	finish
fi
# shellcheck disable=SC1091
. "$cluster_dir/env"
export CLUSTER_DIR=$cluster_dir

if want regress; then
	banner "pg_regress"
	run_installcheck regress REGRESS ISOLATION
fi
if want isolation; then
	banner "isolation"
	run_installcheck isolation ISOLATION REGRESS
fi
if want suites; then
	banner "suites"
	# The suites find the extension installed in the cluster's database.
	if ! out=$(psql -XAtq -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION IF NOT EXISTS idempotency' 2>&1); then
		failed=$((failed + 1))
		note_problem "suites: CREATE EXTENSION idempotency failed in $PGDATABASE (counted as one failure): $out"
	fi
	run_suite_scripts
fi
if want tap; then
	banner "tap"
	run_tap
fi

finish
