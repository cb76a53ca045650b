#!/usr/bin/env bash
#
# model.sh: random operations from several sessions, checked against an
# in-memory model of the contract (README.md) after every step.
#
# test/model/model.c (see its header for the operations and the model)
# drives 4 libpq sessions (MODEL_SESSIONS) through MODEL_STEPS (200) random
# steps for each of MODEL_SEEDS (40) seeds starting at MODEL_FIRST_SEED
# (1): reserve with or without a request hash, with tiny or long ttls, as
# a session owner (with an owner token or none) or a lease owner (a given
# or a server-made token; leases of 1 microsecond, which have run out by
# the next statement, and of 1 hour, which never do), commit, release and
# extend with the owner's token, a fenced one, another or none, from any
# session, get, purge, disconnect, pg_terminate_backend, DISCARD ALL,
# pg_advisory_unlock_all(), SET idem.lease, and single operations in
# transactions that commit or roll back.  wait_timeout is 0, so nothing
# blocks and the interleaving is exactly the one the seed chose, except in
# the timed step (one in a hundred): a 40 ms lease runs out on the clock
# and a waiter must take the key over then, not before.  Each answer is
# compared with the model's, then the whole key space is read back with
# idem_get and compared too.  On a divergence the program prints the seed,
# the step, the trace and a command line that replays it.
#
# The model can also predict known deviations of the server from the
# contract (listed in model.c, all fixed by now): MODEL_STRICT=0 accepts,
# counts and prints them instead of failing on them.
#
# Longer runs: MODEL_SEEDS=500 MODEL_STEPS=1000 bash test/suites/model.sh
# (about 1 ms a step); MODEL_FIRST_SEED picks other seeds.

set -uo pipefail

# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SEEDS=${MODEL_SEEDS:-40}
STEPS=${MODEL_STEPS:-200}
FIRST=${MODEL_FIRST_SEED:-1}
SESSIONS=${MODEL_SESSIONS:-4}
DB=idem_model
work=$IDEM_TMP

if ! out=$(make -s --no-print-directory -C "$IDEM_ROOT/test/model" 2>&1); then
	fail "test/model/model.c builds" "$out"
	finish
	exit 1
fi
ok "test/model/model.c builds"
MODEL=$IDEM_ROOT/test/model/build/model

admin_db=${PGDATABASE:-postgres}
if ! psql_q -d "$admin_db" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB" ||
	! psql_q -d "$admin_db" -c "CREATE DATABASE $DB" ||
	! psql_q -d "$DB" -c "CREATE EXTENSION idempotency"; then
	fail "database $DB with the extension"
	finish
	exit 1
fi
ok "database $DB with the extension"

args=(--first-seed "$FIRST" --seeds "$SEEDS" --steps "$STEPS" --sessions "$SESSIONS")
[[ ${MODEL_STRICT:-1} != 0 ]] && args+=(--strict)
limit=$((SEEDS * STEPS / 100 + 120))	# about 1 ms a step, with room
((limit < 600)) && limit=600
PGDATABASE=$DB timeout -k 5 "$limit" "$MODEL" "${args[@]}" >"$work/model.out" 2>&1
rc=$?
desc="$SEEDS seeds x $STEPS steps x $SESSIONS sessions agree with the model of the contract"
if ((rc == 0)); then
	ok "$desc"
	grep '^model: ' "$work/model.out" | sed 's/^/# /'
else
	fail "$desc" "$(grep -v -e '^      (' -e '^DETAIL:' -e '^HINT:' -e '^)$' "$work/model.out" | tail -n 60)"
fi

if ((_lib_failed == 0)); then
	psql_q -d "$admin_db" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1
fi

finish
