#!/usr/bin/env bash
#
# fuzz.sh: the client library's fuzz harnesses (client/fuzz/).
#
# 1. The regression replay: every input that once crashed a harness
#    (client/fuzz/regress/<harness>/) and every seed of the corpora
#    (client/fuzz/corpus/<harness>/) goes through each harness once,
#    built with the plain C compiler and a main() of our own (no libFuzzer
#    needed), with AddressSanitizer and UBSan when the compiler has them.
#    The harnesses are differential: each input is checked against a
#    reference (the README's HTTP rules, a strict JSON parser, an
#    independent SHA-256 of the framing), not only for crashes.
# 2. When clang with libFuzzer is there: each harness fuzzed for
#    FUZZ_SECONDS (default 10), two at a time; a crash fails the suite and
#    names the input (client/fuzz/build/crashes/<harness>/), which then
#    belongs in regress/ once the bug is fixed.
#
# Needs no server.  FUZZ_SECONDS=0 skips step 2.

set -uo pipefail

# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

FUZZ_DIR=$IDEM_ROOT/client/fuzz
FUZZ_SECONDS=${FUZZ_SECONDS:-10}
HARNESSES=(http headers hash record reservation conninfo)

# ---- the replay ------------------------------------------------------------------

if ! out=$(make -s --no-print-directory -C "$FUZZ_DIR" -j2 "${HARNESSES[@]/#/build/replay_}" 2>&1); then
	fail "the replay drivers build with \$CC (-Wall -Wextra -Werror)" "$out"
	finish
	exit 1
fi
ok "the replay drivers build with ${CC:-cc} (-Wall -Wextra -Werror)"

for h in "${HARNESSES[@]}"; do
	dirs=()
	for d in regress/$h corpus/$h; do
		[[ -d $FUZZ_DIR/$d ]] && dirs+=("$d")
	done
	nreg=$(find "$FUZZ_DIR/regress/$h" -type f 2>/dev/null | wc -l)
	if out=$(cd "$FUZZ_DIR" && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
		timeout -k 5 120 "build/replay_$h" "${dirs[@]}" 2>&1); then
		ok "replay $h: $(tail -n 1 <<<"$out" | sed 's/.*: //') ($nreg regression inputs)"
	else
		fail "replay $h" "$(tail -n 25 <<<"$out")"
	fi
done

# ---- a short fuzz run ----------------------------------------------------------------

if ((FUZZ_SECONDS <= 0)); then
	skip "a short fuzz run of each harness" "FUZZ_SECONDS=0"
elif ! make -s --no-print-directory -C "$FUZZ_DIR" have-libfuzzer >/dev/null 2>&1; then
	skip "a short fuzz run of each harness" \
		"no clang with libFuzzer (-fsanitize=fuzzer; Debian: apt-get install clang libclang-rt-14-dev)"
else
	if ! out=$(make -s --no-print-directory -C "$FUZZ_DIR" -j2 all 2>&1); then
		fail "the fuzzers build with clang -fsanitize=fuzzer,address,undefined" "$out"
	else
		ok "the fuzzers build with clang -fsanitize=fuzzer,address,undefined"
		out=$(make -s --no-print-directory -k -C "$FUZZ_DIR" -j2 run FUZZ_SECONDS="$FUZZ_SECONDS" 2>&1)
		for h in "${HARNESSES[@]}"; do
			line=$(grep -E "^fuzz_$h: " <<<"$out" | head -n 1)
			if [[ $line == *", no crash" ]]; then
				ok "$line"
			else
				fail "fuzz_$h: no crash in ${FUZZ_SECONDS}s" "${line:-no summary}" \
					"$(grep -A 8 -E "^fuzz_$h: " <<<"$out" | tail -n +2)"
			fi
		done
	fi
fi

finish
