#!/usr/bin/env bash
#
# client.sh: libidem, the C client library.
#
# Builds it (warnings are errors), checks what the shared library exports
# and how it installs (soname, pkg-config, DESTDIR), compiles and runs the
# README's "use from C" example against the installed copy, runs the C
# tests (client/test/test_offline.c, client/test/test_client.c) against the
# suite's cluster, then both again under valgrind, which must report no
# error and no leak.  Each check of the C tests counts here.  When
# pgbouncer is installed, test_client also runs its checks through a
# PgBouncer in transaction mode with a pool of 3 (IDEM_TEST_PROXY).

# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

CLIENT=$IDEM_ROOT/client
B=$CLIENT/build

# Counts the "ok - ..." / "not ok - ..." lines of a C test program through
# lib.sh, and checks that it ended with its "N passed, M failed" line.
run_c_tests()
{
	local name=$1 out rc line
	shift
	out=$("$@" 2>&1)
	rc=$?
	while IFS= read -r line; do
		case $line in
			"ok - "*) ok "$name: ${line#ok - }" ;;
			"not ok - "*) fail "$name: ${line#not ok - }" ;;
			"#"*) printf '%s\n' "$line" ;;
		esac
	done <<<"$out"
	line=$(tail -n 1 <<<"$out")
	if [[ ! $line =~ ^[0-9]+\ passed,\ [0-9]+\ failed$ ]]; then
		fail "$name ran to its end (exit $rc)" "$(tail -n 20 <<<"$out")"
	fi
}

if ! out=$(make -s --no-print-directory -C "$CLIENT" all build/test_offline build/test_client 2>&1); then
	fail "libidem, idem and the tests build with -Wall -Wextra -Werror" "$out"
	finish
	exit 1
fi
ok "libidem, idem and the tests build with -Wall -Wextra -Werror"

# ---- what the shared library exports ---------------------------------------

major=$(sed -n 's/^#define IDEM_VERSION_MAJOR[[:space:]]*\([0-9]*\).*/\1/p' "$CLIENT/idem.h")
shlib=$(ls "$B"/libidem.so."$major".*.* 2>/dev/null | head -n 1)
check_eq "the shared library's soname is libidem.so.$major" "libidem.so.$major" \
	"$(readelf -d "$shlib" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')"
foreign=$(nm -D --defined-only "$shlib" | awk '{ print $NF }' |
	grep -v -e '^idem_' -e '^LIBIDEM_' || true)
check_eq "only idem_* symbols are exported (nm -D)" "" "$foreign"
n_exported=$(nm -D --defined-only "$shlib" | awk '{ print $NF }' | grep -c '^idem_')
if ((n_exported >= 60)); then
	ok "the whole API is exported ($n_exported functions)"
else
	fail "the whole API is exported" "only $n_exported idem_* symbols"
fi
undefined_internal=$(nm "$B/libidem.a" | awk '$2 ~ /^[TDB]$/ { print $3 }' |
	grep -v -e '^idem_' || true)
check_eq "the static library defines only idem_* / idem__* symbols" "" "$undefined_internal"

# ---- install with DESTDIR and PREFIX, then use it through pkg-config -------

inst=$IDEM_TMP/inst
rm -rf "$inst"
check "make install DESTDIR=... PREFIX=/opt/idem" \
	make -s --no-print-directory -C "$CLIENT" install DESTDIR="$inst" PREFIX=/opt/idem
for f in include/idem.h lib/libidem.so lib/libidem.so."$major" lib/libidem.a \
	lib/pkgconfig/libidem.pc bin/idem; do
	if [[ -e $inst/opt/idem/$f ]]; then
		ok "installed $f"
	else
		fail "installed $f" "$(cd "$inst" && find . | head -n 30)"
	fi
done
check_eq "libidem.pc names the prefix" "/opt/idem/lib" \
	"$(PKG_CONFIG_PATH=$inst/opt/idem/lib/pkgconfig pkg-config --variable=libdir libidem)"

# the README example is this file, verbatim
readme_example=$(sed -n '/^### Use from C$/,/^### /p' "$IDEM_ROOT/README.md" |
	sed -n '/^```c$/,/^```$/p' | sed '1d;$d')
file_example=$(sed '1,/^ \*\//d' "$CLIENT/test/example.c")
check_eq "README's \"use from C\" example is client/test/example.c" \
	"$file_example" "$readme_example"

# the README example, built with pkg-config against the installed copy
export PKG_CONFIG_PATH=$inst/opt/idem/lib/pkgconfig
export PKG_CONFIG_SYSROOT_DIR=$inst
ex=$IDEM_TMP/example
# shellcheck disable=SC2046 # pkg-config's words are meant to split
if out=$(cc -std=c11 -Wall -Wextra -Werror "$CLIENT/test/example.c" \
	$(pkg-config --cflags --libs libidem) -o "$ex" 2>&1); then
	ok "the README example compiles with \$(pkg-config --cflags --libs libidem)"
else
	fail "the README example compiles with \$(pkg-config --cflags --libs libidem)" "$out"
fi
# shellcheck disable=SC2046 # libidem.a, with libpq and libcrypto shared
if out=$(cc -std=c11 -Wall -Wextra -Werror "$CLIENT/test/example.c" \
	$(pkg-config --cflags libidem) -Wl,-Bstatic $(pkg-config --libs-only-l libidem) \
	-Wl,-Bdynamic $(pkg-config --static --libs libidem | sed 's/-lidem//') \
	-o "$ex-static" 2>&1); then
	ok "and links statically (pkg-config --static)"
else
	fail "and links statically (pkg-config --static)" "$out"
fi
unset PKG_CONFIG_PATH PKG_CONFIG_SYSROOT_DIR
order="example-$$-$RANDOM"
first=$(LD_LIBRARY_PATH=$inst/opt/idem/lib "$ex" "$order" 2>&1)
second=$("$ex-static" "$order" 2>&1)
check_eq "the example charges once" "fresh: 201 {\"order\": \"$order\", \"charged\": 100}" "$first"
check_eq "and replays the second time" "replay: 201 {\"order\": \"$order\", \"charged\": 100}" "$second"

# client/README.md's observer example: one logfmt line per call
obs_src=$IDEM_TMP/observer_example.c
sed -n '/^## Observing calls/,/^## Problem details/p' "$CLIENT/README.md" |
	sed -n '/^```c$/,/^```$/p' | sed '1d;$d' >"$obs_src"
# shellcheck disable=SC2046 # pkg-config's words are meant to split
if out=$(PKG_CONFIG_PATH=$inst/opt/idem/lib/pkgconfig PKG_CONFIG_SYSROOT_DIR=$inst \
	cc -std=c11 -Wall -Wextra -Werror "$obs_src" \
	$(PKG_CONFIG_PATH=$inst/opt/idem/lib/pkgconfig PKG_CONFIG_SYSROOT_DIR=$inst pkg-config --cflags --libs libidem) \
	-o "$IDEM_TMP/observer_example" 2>&1); then
	ok "client/README.md's observer example compiles against the installed copy"
	receipt="receipt-$$-$RANDOM"
	lines=$(LD_LIBRARY_PATH=$inst/opt/idem/lib "$IDEM_TMP/observer_example" "$receipt" 2>&1 |
		sed -n 's/^op=\([a-z_]*\) outcome=\([a-z_]*\) error=\([a-z_]*\) sqlstate="" key="'"$receipt"'" scope="shop" .*status=\([0-9]*\) duration_us=[0-9]*$/\1 \2 \3 \4/p' |
		tr '\n' ',')
	check_eq "and logs one line per call: reserve, commit, run, then reserve, run replayed" \
		"reserve fresh ok 0,commit fresh ok 0,run fresh ok 202,reserve replay ok 202,run replay ok 202," "$lines"
else
	fail "client/README.md's observer example compiles against the installed copy" "$out"
fi

# ---- the C tests -----------------------------------------------------------

# a transaction pooler in front of the cluster, for test_client's proxy checks
if [[ -x /usr/sbin/pgbouncer ]]; then
	bouncer=$IDEM_TMP/pgbouncer
	trap 'bash "$IDEM_ROOT/tools/pgbouncer.sh" stop "$bouncer" >/dev/null 2>&1' EXIT
	if out=$(bash "$IDEM_ROOT/tools/pgbouncer.sh" start "$bouncer" transaction 3 2>&1); then
		IDEM_TEST_PROXY=$(
			# shellcheck disable=SC1091
			. "$bouncer/env"
			printf 'host=%s port=%s' "$PGHOST" "$PGPORT"
		)
		export IDEM_TEST_PROXY
	else
		fail "PgBouncer starts for the proxy checks (tools/pgbouncer.sh)" "$out"
	fi
else
	skip "test_client through PgBouncer" "pgbouncer is not installed"
fi

run_c_tests test_offline "$B/test_offline"
run_c_tests test_client "$B/test_client"

# ---- again under valgrind --------------------------------------------------

if ! command -v valgrind >/dev/null 2>&1; then
	fail "valgrind is installed (tools/deps.sh)"
else
	for t in test_offline test_client; do
		log=$IDEM_TMP/valgrind-$t.log
		valgrind --error-exitcode=99 --leak-check=full \
			--show-leak-kinds=definite,indirect,possible \
			--errors-for-leak-kinds=definite,indirect,possible \
			--log-file="$log" "$B/$t" >"$IDEM_TMP/valgrind-$t.out" 2>&1
		rc=$?
		summary=$(tail -n 1 "$IDEM_TMP/valgrind-$t.out")
		errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$log" | tail -n 1)
		if ((rc == 0)) && [[ $summary == *" 0 failed" && $errors == 0 ]]; then
			ok "$t under valgrind: $summary, 0 errors, no leaks"
		else
			fail "$t under valgrind: exit $rc, $summary, ${errors:-?} errors" \
				"$(grep -v '^ok' "$IDEM_TMP/valgrind-$t.out" | tail -n 20)" \
				"$(grep -E 'lost|ERROR SUMMARY|Invalid|uninitialised' "$log" | head -n 20)"
		fi
	done
fi

finish
