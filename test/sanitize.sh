#!/usr/bin/env bash
#
# sanitize.sh: the extension built with AddressSanitizer and
# UndefinedBehaviorSanitizer, tested in a server of its own (`make
# sanitize`).
#
# The module is built in a copy of the source tree with
# COPT='-fsanitize=address,undefined', and installed (DESTDIR) into a
# private copy of the PostgreSQL installation (its bindir, pkglibdir and
# sharedir under one directory; the copied binaries find their own lib and
# share directories, as pg_config does).  The installed module, the
# system's PostgreSQL and the tree's own build are never touched, so there
# is nothing to restore afterwards.  The server itself is not built with
# ASan: the postmaster starts with gcc's ASan and UBSan runtimes in
# LD_PRELOAD (every backend inherits them), ASAN_OPTIONS=detect_leaks=0
# (the server frees by memory context, not by free()) and reports written
# to files.  Then the regress suite (pg_regress), the isolation specs and
# the bad-input suite (test/suites/badinput.sh) run against it, and the
# reports are read: the run fails on any report whose stack or location is
# in the extension's code, and on a backend crash in the server log.
# Reports elsewhere are listed, not counted.
#
# What it can see: every access the module's own code makes (ASan checks
# its loads and stores, UBSan its arithmetic, shifts, alignment, bounds and
# null pointers), and memory that comes from malloc (the runtime replaces
# the allocator for the whole server: a memory context's blocks and any
# chunk over 8 kB are malloc blocks with red zones).  What it cannot see:
# an overrun that stays inside one memory context block (palloc'd chunks
# share a block, and the server does not poison them for ASan), and
# anything the server's own, uninstrumented code does.
#
# Ends with "N passed, M failed, K skipped"; exits non-zero on failure.
# SANITIZE_DIR (default a new directory under /tmp) holds everything and is
# removed after a clean run; SANITIZE_KEEP=1 keeps it.
# SANITIZE_SUITES=regress,isolation,badinput picks the suites.  With
# SANITIZE_SKIP_UNSUPPORTED=1 (the suite test/suites/sanitize.sh, which runs
# this within make test) a machine that cannot run it (no sanitizer
# runtime, a PostgreSQL that cannot be copied, a server that does not start
# with ASan preloaded) skips it instead of failing.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SYS_PG_CONFIG=${PG_CONFIG:-pg_config}
SUITES=${SANITIZE_SUITES:-regress,isolation,badinput}
SUITE_TIMEOUT=${SANITIZE_SUITE_TIMEOUT:-600}

passed=0
failed=0
skipped=0

ok() { passed=$((passed + 1)); printf 'ok - %s\n' "$1"; }
fail()
{
	failed=$((failed + 1))
	printf 'not ok - %s\n' "$1"
	if [[ $# -gt 1 ]]; then
		shift
		printf '%s\n' "$@" | sed 's/^/#   /'
	fi
}
skip() { skipped=$((skipped + 1)); printf 'ok - %s # SKIP %s\n' "$1" "$2"; }
banner() { printf '\n==> %s\n' "$*"; }
want() { [[ ,$SUITES, == *,"$1",* ]]; }

work=
cluster=
user=

finish()
{
	stop_server
	echo
	if ((failed == 0)) && [[ -n $work && ${SANITIZE_KEEP:-} != 1 ]]; then
		rm -rf "$work"
	elif [[ -n $work ]]; then
		echo "sanitize: everything is kept in $work (reports in $work/reports)"
	fi
	echo "$passed passed, $failed failed, $skipped skipped"
	((failed == 0))
	exit
}

# This machine cannot run it (no runtime, a PostgreSQL that cannot be
# copied, a server that will not start under ASan): a failure of `make
# sanitize`, a skip of the suite that runs it within make test
# (SANITIZE_SKIP_UNSUPPORTED=1, test/suites/sanitize.sh).
cannot_run()
{
	local reason="not here: $1${2:+ ($(head -n 1 <<<"$2"))}"
	if [[ ${SANITIZE_SKIP_UNSUPPORTED:-} == 1 ]]; then
		printf '1..0 # SKIP %s\n' "$reason"
		skip "sanitize" "$reason"
		finish
	fi
	give_up "$@"
}

give_up()
{
	fail "$1" "${@:2}"
	finish
}

stop_server()
{
	if [[ -n $cluster ]]; then
		PG_CONFIG=$priv_pg_config bash "$ROOT/tools/cluster.sh" stop "$cluster" >/dev/null 2>&1 ||
			echo "sanitize: could not stop the server in $cluster" >&2
		cluster=
	fi
}
trap stop_server EXIT
trap 'echo "sanitize: interrupted" >&2; stop_server; exit 130' INT TERM

run_as()
{
	local who=$1
	shift
	if [[ $who == "$(id -un)" ]]; then
		(cd / && "$@")
	else
		(cd / && runuser -u "$who" -- "$@")
	fi
}

# --- what it needs -------------------------------------------------------

command -v gcc >/dev/null 2>&1 || cannot_run "gcc is installed" "sanitize needs gcc"
asan_rt=$(readlink -f "$(gcc -print-file-name=libasan.so)")
ubsan_rt=$(readlink -f "$(gcc -print-file-name=libubsan.so)")
[[ -f $asan_rt && -f $ubsan_rt ]] ||
	cannot_run "gcc's ASan and UBSan runtimes are installed" \
		"libasan.so: $asan_rt, libubsan.so: $ubsan_rt (Debian: libgcc-12-dev)"
for d in bindir pkglibdir sharedir; do
	v=$("$SYS_PG_CONFIG" --$d 2>/dev/null) ||
		cannot_run "pg_config --$d" "no pg_config ($SYS_PG_CONFIG)"
	declare "sys_$d=$v"
done
# shellcheck disable=SC2154 # declared above
[[ -x $sys_bindir/postgres ]] || cannot_run "the server is installed" "no $sys_bindir/postgres"

work=${SANITIZE_DIR:-$(mktemp -d /tmp/idem-sanitize.XXXXXX)}
mkdir -p "$work"
chmod 0755 "$work"
pg=$work/pg
build=$work/build
reports=$work/reports
cluster_dir=$work/cluster

# --- the private PostgreSQL installation --------------------------------------

banner "a private copy of the PostgreSQL installation in $pg"
rm -rf "$pg"
# shellcheck disable=SC2154 # declared above
for d in "$sys_bindir" "$sys_pkglibdir" "$sys_sharedir"; do
	mkdir -p "$pg$(dirname "$d")"
	cp -a "$d" "$pg$d" || give_up "copy $d"
done
priv_pg_config=$pg$sys_bindir/pg_config
for d in bindir pkglibdir sharedir; do
	got=$("$priv_pg_config" --$d)
	sys=sys_$d
	if [[ $got != "$pg${!sys}" ]]; then
		cannot_run "the copied installation finds its own directories" \
			"pg_config --$d of the copy says $got, not $pg${!sys}:" \
			"this PostgreSQL is not relocatable, so the sanitized module cannot be kept apart"
	fi
done
ok "a private copy of the PostgreSQL installation (bindir, pkglibdir, sharedir)"

# --- the sanitized module ----------------------------------------------------

banner "build with -fsanitize=address,undefined"
rm -rf "$build"
mkdir -p "$build"
tar -C "$ROOT" --exclude=test/tmp --exclude=test/out --exclude=test/isolation/out \
	--exclude='*.o' --exclude='*.so' --exclude='*.bc' \
	-cf - Makefile idempotency.control src sql expected test |
	tar -C "$build" -xf - || give_up "copy the source tree"
sanitize_flags='-fsanitize=address,undefined -fno-omit-frame-pointer -g'
if out=$(make -s -C "$build" NO_CLIENT=1 PG_CONFIG="$SYS_PG_CONFIG" \
	COPT="$sanitize_flags" 2>&1) &&
	out=$(make -s -C "$build" NO_CLIENT=1 PG_CONFIG="$SYS_PG_CONFIG" \
		COPT="$sanitize_flags" DESTDIR="$pg" install 2>&1); then
	ok "the module builds with $sanitize_flags and installs into the copy"
else
	give_up "the module builds with $sanitize_flags" "$(tail -n 30 <<<"$out")"
fi
so=$("$priv_pg_config" --pkglibdir)/idempotency.so
if [[ $(nm -D "$so" 2>/dev/null) == *__asan_report* ]]; then
	ok "the installed copy of idempotency.so is instrumented"
else
	give_up "the installed copy of idempotency.so is instrumented" "no __asan_report symbols in $so"
fi

# --- the server, with the runtimes preloaded ---------------------------------

# Preloaded into a program that is not built with it, the ASan runtime sets
# itself up at the first malloc, which here is in a library's constructor
# (libgpg-error's, inside bindtextdomain, holding gettext's lock); the end
# of that set-up looks up swift_demangle with dlsym and clears the error
# with dlerror, which translates the message through gettext, takes the
# same lock, and leaves it broken: postgres then hangs in its own
# bindtextdomain.  A swift_demangle of our own (never called for C names)
# makes that lookup succeed, so no message is made.
stub=$work/swift_demangle_stub.so
printf '%s\n' '#include <stddef.h>' \
	'char *swift_demangle(const char *m, size_t l, char *o, size_t *ol, unsigned f);' \
	'char *swift_demangle(const char *m, size_t l, char *o, size_t *ol, unsigned f)' \
	'{ (void) m; (void) l; (void) o; (void) ol; (void) f; return NULL; }' >"$work/swift_demangle_stub.c"
if ! out=$(gcc -shared -fPIC -O2 -o "$stub" "$work/swift_demangle_stub.c" 2>&1); then
	give_up "the swift_demangle stub builds" "$out"
fi
chmod 0755 "$stub"

banner "a server with $asan_rt and $ubsan_rt preloaded"
# a cluster of the copy's binaries, then restarted with the runtimes
if ! out=$(PG_CONFIG=$priv_pg_config CLUSTER_PORT=${SANITIZE_PORT:-56320} \
	CLUSTER_OPTS="jit=off log_min_messages=warning" \
	bash "$ROOT/tools/cluster.sh" start "$cluster_dir" 2>&1); then
	give_up "a throwaway cluster starts" "$out"
fi
cluster=$cluster_dir
user=$(stat -c %U "$cluster_dir/data")
# shellcheck disable=SC1091
. "$cluster_dir/env"
export PGHOST PGPORT PGUSER PGDATABASE
mkdir -p "$reports"
chown "$user:" "$reports"
run_as "$user" "$pg$sys_bindir/pg_ctl" -D "$cluster_dir/data" -m fast -w stop >/dev/null 2>&1
server_env=(
	LD_PRELOAD="$asan_rt $stub $ubsan_rt"
	ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:log_path=$reports/asan:print_suppressions=0"
	UBSAN_OPTIONS="print_stacktrace=1:log_path=$reports/ubsan"
)
if ! run_as "$user" env "${server_env[@]}" "$pg$sys_bindir/pg_ctl" -D "$cluster_dir/data" \
	-l "$cluster_dir/log/postgresql.log" -w -t 60 start >/dev/null 2>&1; then
	cannot_run "the server starts with the ASan runtime preloaded" "$(tail -n 20 "$cluster_dir/log/postgresql.log")"
fi
pid=$(head -n 1 "$cluster_dir/data/postmaster.pid")
if grep -q libasan "/proc/$pid/maps" 2>/dev/null; then
	ok "the postmaster runs with the ASan runtime ($(basename "$asan_rt")) preloaded"
else
	cannot_run "the postmaster runs with the ASan runtime preloaded" "no libasan in /proc/$pid/maps"
fi
# a backend that has called the extension maps the copy's module and ASan
want="t|$so"
out=$(psql -XAtq -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION idempotency' \
	-c "SELECT idem_derive_key('x') IS NOT NULL" \
	-c "SELECT position('libasan' IN m) > 0, (SELECT string_agg(DISTINCT substring(l FROM '/\\S*idempotency\\.so'), ',') FROM regexp_split_to_table(m, E'\\n') l) FROM pg_read_file('/proc/self/maps') m" 2>&1 | tail -n 1)
if [[ $out == "$want" ]]; then
	ok "CREATE EXTENSION loads the sanitized module, and the backend has ASan"
else
	give_up "CREATE EXTENSION loads the sanitized module, and the backend has ASan" \
		"want: $want" "got:  $out"
fi
log_start=$(stat -c %s "$cluster_dir/log/postgresql.log")

# --- the suites --------------------------------------------------------------

tally_pg_regress()
{
	local name=$1 log=$2 rc=$3 good bad
	good=$(grep -cE '\.\.\. +ok( |$)' "$log")
	bad=$(grep -cE '\.\.\. +(FAILED|failed)' "$log")
	passed=$((passed + good))
	failed=$((failed + bad))
	echo "--- $name: $good ok, $bad failed (exit $rc)"
	if ((rc != 0 && bad == 0)); then
		fail "$name: make installcheck exited $rc" "$(tail -n 20 "$log")"
	fi
	if ((bad > 0)); then
		find "$build" -name regression.diffs -size +0 -exec head -n 200 {} \;
	fi
}

if want regress; then
	banner "pg_regress"
	start=$SECONDS
	timeout -k 10 "$SUITE_TIMEOUT" make -s -C "$build" NO_CLIENT=1 PG_CONFIG="$SYS_PG_CONFIG" \
		installcheck ISOLATION= >"$work/regress.log" 2>&1
	rc=$?
	sed 's/^/    /' "$work/regress.log"
	tally_pg_regress regress "$work/regress.log" "$rc"
	echo "# regress: $((SECONDS - start))s"
fi
if want isolation; then
	banner "isolation"
	start=$SECONDS
	timeout -k 10 "$SUITE_TIMEOUT" make -s -C "$build" NO_CLIENT=1 PG_CONFIG="$SYS_PG_CONFIG" \
		installcheck REGRESS= >"$work/isolation.log" 2>&1
	rc=$?
	sed 's/^/    /' "$work/isolation.log"
	tally_pg_regress isolation "$work/isolation.log" "$rc"
	echo "# isolation: $((SECONDS - start))s"
fi
if want badinput; then
	banner "suites/badinput.sh"
	start=$SECONDS
	mkdir -p "$work/badinput"
	chmod 0755 "$work/badinput"
	CLUSTER_DIR=$cluster_dir IDEM_TMP=$work/badinput IDEM_ROOT=$build \
		timeout -k 10 "$SUITE_TIMEOUT" bash "$build/test/suites/badinput.sh" \
		</dev/null >"$work/badinput.log" 2>&1
	rc=$?
	sed 's/^/    /' "$work/badinput.log"
	line=$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$work/badinput.log" | tail -n 1)
	if [[ -n $line ]]; then
		read -r p f k < <(sed -E 's/^([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped$/\1 \2 \3/' <<<"$line")
		passed=$((passed + p))
		failed=$((failed + f))
		skipped=$((skipped + k))
		echo "--- badinput: $p ok, $f failed, $k skipped (exit $rc)"
	else
		fail "badinput: ran to its summary line" "exit $rc; $(tail -n 5 "$work/badinput.log")"
	fi
	echo "# badinput: $((SECONDS - start))s"
fi

# --- the reports -------------------------------------------------------------

banner "sanitizer reports"
stop_server
# The reports go to the log_path files, or to the server's stderr (its log):
# a backend's environment is overwritten by its process title, so a runtime
# that reads its options there after the fork finds none and writes to
# stderr.  Both are read.  In the log, a report is a run of lines that are
# not the server's own (which begin with the date), from its first line
# ("runtime error:", "==pid==ERROR: ...Sanitizer").
tail -c +"$((log_start + 1))" "$cluster_dir/log/postgresql.log" >"$work/server.log"
rm -rf "$work/found"
mkdir -p "$work/found"
awk -v dir="$work/found" '
	/^[0-9]{4}-[0-9]{2}-[0-9]{2} / { if (out) close(out); out = ""; next }
	/runtime error:|^==[0-9]+==ERROR: [A-Za-z]+Sanitizer/ {
		if (!out) { n++; out = sprintf("%s/server-log.%d", dir, n) }
	}
	out { print > out }
' "$work/server.log"
shopt -s nullglob
files=("$reports"/asan.* "$reports"/ubsan.* "$work"/found/server-log.*)
shopt -u nullglob
ours=()
others=()
for f in "${files[@]}"; do
	if ! grep -qE 'runtime error:|ERROR: [A-Za-z]+Sanitizer' "$f"; then
		continue		# a runtime's notes, no report
	fi
	if grep -qE 'idempotency\.so|src/idem[a-z_]*\.[ch]|src/idempotency\.[ch]' "$f"; then
		ours+=("$f")
	else
		others+=("$f")
	fi
done
echo "# reports: ${#ours[@]} in the extension's code, ${#others[@]} elsewhere"
for f in "${others[@]}"; do
	echo "# not ours: $f: $(grep -m 1 -E 'ERROR: [A-Za-z]+Sanitizer|runtime error' "$f" | cut -c 1-200)"
done
if ((${#ours[@]} == 0)); then
	ok "no ASan or UBSan report in the extension's code"
else
	details=()
	for f in "${ours[@]}"; do
		details+=("$f:" "$(grep -E 'ERROR: [A-Za-z]+Sanitizer|runtime error|^ +#[0-9]+ ' "$f" | head -n 25)")
	done
	fail "no ASan or UBSan report in the extension's code" "${details[@]}"
fi
crash_lines=$(grep -aE 'terminated by signal|server process .* (was terminated|exited with exit code)|TRAP:|PANIC:' \
	"$work/server.log" | head -n 20)
if [[ -z $crash_lines ]]; then
	ok "no backend crashed or was stopped by a sanitizer"
else
	fail "no backend crashed or was stopped by a sanitizer" "$crash_lines"
fi

finish
