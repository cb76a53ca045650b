#!/usr/bin/env bash
#
# http.sh: the HTTP example (examples/http) end to end, with curl.
#
# Starts the mail API stand-in (mailsink) and the service on free loopback
# ports against the suite's cluster, then: 20 concurrent identical POSTs
# make one charge and 20 identical responses (status, headers but Date and
# Idempotent-Replayed, body); the same key with another body or path is
# 422; GET bypasses; a missing key is 400; with waiting disabled the
# duplicate of a request in flight gets 409; 5xx and 429 are not stored
# (the charge rolls back and a retry runs again), a 402 is; Set-Cookie and
# Authorization reach the first client only and are never stored or
# replayed; keys are scoped by tenant; and after `kill -9` of the service in
# the middle of a request, a retry makes the charge once and the email is
# sent once to the counting mail API.  Every answer of the idempotency
# layer (400 missing and bad key, 409 in flight and lease lost, 422, 503,
# 500 handler and store failures) comes as RFC 9457 problem details when
# the Accept header asks for application/problem+json, and in the Stripe
# shape otherwise; the call log (libidem's observer) has one line per call.  Then the same service behind
# PgBouncer in transaction mode with a pool of 3 (tools/pgbouncer.sh), once
# with --lease 10s and once with no option (libidem sees the proxy and
# takes a lease by itself): 20 concurrent POST /emails and 20 concurrent
# POST /charges with one key each send one mail and make one row, and
# answer 20 identical responses.

# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"

EX=$IDEM_ROOT/examples/http
T=$IDEM_TMP
P="http-$$-$RANDOM"				# keys of this run
SVC_PID=
SINK_PID=
SVC2_PID=
DB=
BOUNCER=

cleanup()
{
	local pid
	for pid in "$SVC_PID" "$SVC2_PID" "$SINK_PID"; do
		if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
			kill -TERM "$pid" 2>/dev/null
			{ wait "$pid"; } 2>/dev/null
		fi
	done
	if [[ -n $BOUNCER ]]; then
		bash "$IDEM_ROOT/tools/pgbouncer.sh" stop "$BOUNCER" >/dev/null 2>&1
	fi
	if [[ -n $DB ]]; then
		psql_q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
	fi
}
trap cleanup EXIT

if ! out=$(make -s --no-print-directory -C "$EX" 2>&1); then
	fail "examples/http builds (-Wall -Wextra -Werror)" "$out"
	finish
	exit 1
fi
ok "examples/http builds (-Wall -Wextra -Werror)"

# a database of the suite's own: the service and psql find it in PGDATABASE
if out=$(PGOPTIONS="-c client_min_messages=warning" psql_q -d postgres -c "DROP DATABASE IF EXISTS idem_http_suite WITH (FORCE)" 2>&1 &&
	psql_q -d postgres -c "CREATE DATABASE idem_http_suite" 2>&1 &&
	psql_q -d idem_http_suite -c "CREATE EXTENSION idempotency" 2>&1); then
	DB=idem_http_suite
	export PGDATABASE=$DB
else
	fail "a database with the extension for the suite" "$out"
	finish
	exit 1
fi

# wait_file FILE SECONDS: until FILE is non-empty
wait_file()
{
	local i
	for ((i = 0; i < $2 * 20; i++)); do
		[[ -s $1 ]] && return 0
		sleep 0.05
	done
	return 1
}

# start_service PORT [ARGS...]: starts the service on PORT (0 = free),
# sets SVC_PID and SVC_PORT.  Retries a few times when PORT is busy.
start_service()
{
	local port=$1 try
	shift
	for try in 1 2 3 4 5; do
		rm -f "$T/service.port"
		"$EX/service" --port "$port" --port-file "$T/service.port" \
			--mail "127.0.0.1:$SINK_PORT" --test-hooks --threads 24 --wait 20s \
			--call-log "$T/calls.log" "$@" \
			>>"$T/service.out" 2>>"$T/service.err" &
		SVC_PID=$!
		if wait_file "$T/service.port" 10; then
			SVC_PORT=$(cat "$T/service.port")
			BASE=http://127.0.0.1:$SVC_PORT
			return 0
		fi
		kill -9 "$SVC_PID" 2>/dev/null
		{ wait "$SVC_PID"; } 2>/dev/null
		SVC_PID=
		echo "# service did not start (try $try)"
		tail -n 5 "$T/service.err"
		sleep 0.5
	done
	return 1
}

# kill9_service: kill -9 the service, reaping it quietly
kill9_service()
{
	kill -9 "$SVC_PID" 2>/dev/null
	{ wait "$SVC_PID"; } 2>/dev/null
	SVC_PID=
}

# hook_lines: how many times a test hook has started sleeping so far
hook_lines()
{
	grep -c 'test hook: sleeping' "$T/service.err" 2>/dev/null || true
}

# wait_hook N: until more than N hook lines (the handler is asleep)
wait_hook()
{
	local i
	for ((i = 0; i < 200; i++)); do
		(($(hook_lines) > $1)) && return 0
		sleep 0.05
	done
	return 1
}

# req NAME METHOD PATH [CURL ARGS...]: prints the status; headers in
# $T/NAME.h, body in $T/NAME.b
req()
{
	local name=$1 method=$2 path=$3
	shift 3
	curl -sS --max-time 40 -o "$T/$name.b" -D "$T/$name.h" -w '%{http_code}' \
		-X "$method" "$BASE$path" "$@" 2>"$T/$name.err"
}

# the response without the headers that may differ between a response
# and its replay (Date, Idempotent-Replayed): status line, headers, body
canon()
{
	grep -v -i -e '^date:' -e '^idempotent-replayed:' "$T/$1.h"
	cat "$T/$1.b"
}

replayed() { grep -qi '^idempotent-replayed: true' "$T/$1.h"; }
header() { grep -i "^$2:" "$T/$1.h" | head -n 1 | cut -d' ' -f2- | tr -d '\r'; }
rows() { psql_q -c "SELECT count(*) FROM http_example.charges WHERE tenant = '$1' AND idempotency_key = '$2'"; }
# a field of a flat JSON body: "name": "value" or "name": 123
field()
{
	sed -n 's/.*"'"$2"'": *"\{0,1\}\([^",}]*\)"\{0,1\}.*/\1/p' "$T/$1.b" | head -n 1
}
sink() { curl -sS --max-time 10 "http://127.0.0.1:$SINK_PORT$1"; }
sink_calls() { sink "/stats/$1" | sed -n 's/.*"calls": \([0-9]*\).*/\1/p'; }
sink_sent() { sink "/stats/$1" | sed -n 's/.*"sent": \([0-9]*\).*/\1/p'; }
downstream_key()
{
	psql_q -c "SELECT idem_derive_key(idem_derive_key('emails', '$1', '$2'), 'send')"
}

# the service refuses to start without the extension, or with a bad --wait
PGOPTIONS="-c client_min_messages=warning" psql_q -d postgres -c "DROP DATABASE IF EXISTS idem_http_noext" \
	-c "CREATE DATABASE idem_http_noext" >/dev/null
PGDATABASE=idem_http_noext "$EX/service" --port 0 >/dev/null 2>"$T/noext.err"
rc=$?
psql_q -d postgres -c "DROP DATABASE IF EXISTS idem_http_noext" >/dev/null
if [[ $rc == 69 ]] && grep -q "CREATE EXTENSION idempotency" "$T/noext.err"; then
	ok "without the extension the service exits 69 and says CREATE EXTENSION idempotency"
else
	fail "without the extension: exit 69" "exit $rc" "$(cat "$T/noext.err")"
fi
"$EX/service" --port 0 --wait soon >/dev/null 2>"$T/badwait.err"
check_eq "a bad --wait: exit 64" 64 "$?"

: >"$T/service.err"
: >"$T/service.out"
: >"$T/calls.log"
rm -f "$T/sink.port"
"$EX/mailsink" --port 0 --port-file "$T/sink.port" >"$T/sink.out" 2>&1 &
SINK_PID=$!
if wait_file "$T/sink.port" 10; then
	SINK_PORT=$(cat "$T/sink.port")
	ok "mailsink listens on 127.0.0.1:$SINK_PORT"
else
	fail "mailsink starts" "$(cat "$T/sink.out")"
	finish
	exit 1
fi
if start_service 0 && [[ $(curl -sS --max-time 5 "$BASE/healthz") == '{"ok": true}' ]]; then
	ok "service listens on 127.0.0.1:$SVC_PORT"
else
	fail "service starts" "$(tail -n 20 "$T/service.err")"
	finish
	exit 1
fi

# ---- 20 concurrent identical POSTs ---------------------------------------

key=$P-twenty
body='{"amount": 2000, "currency": "usd", "description": "twenty at once"}'
pids=()
for i in $(seq 1 20); do
	# the one that runs sleeps 1 s in the handler: the others arrive while
	# it is in flight and wait for it
	req "c20.$i" POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" \
		-H "X-Test-Sleep-Ms: 1000" -H "Content-Type: application/json" \
		-d "$body" >"$T/c20.$i.status" &
	pids+=($!)
done
wait "${pids[@]}"
check_eq "20 concurrent POST /charges with one key: one charge row" 1 "$(rows acme "$key")"
statuses=$(for i in $(seq 1 20); do printf "%s\n" "$(<"$T/c20.$i.status")"; done | sort | uniq -c | awk '{print $1 "x" $2}')
check_eq "all 20 answered 201" "20x201" "$statuses"
same=1
canon c20.1 >"$T/c20.canon"
for i in $(seq 2 20); do
	canon "c20.$i" | cmp -s - "$T/c20.canon" || { same=0; echo "# response $i differs:"; diff <(canon "c20.$i") "$T/c20.canon" | sed 's/^/#   /'; }
done
if ((same)) && [[ -n $(field c20.1 id) ]]; then
	ok "20 identical responses: status line, headers (but Date, Idempotent-Replayed) and body byte for byte ($(field c20.1 id))"
else
	fail "20 identical responses"
fi
nrep=0
for i in $(seq 1 20); do replayed "c20.$i" && nrep=$((nrep + 1)); done
check_eq "19 of them carry Idempotent-Replayed: true, the one that ran does not" 19 "$nrep"
for i in $(seq 1 20); do replayed "c20.$i" || first=c20.$i; done
s=$(req c20.later POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d "$body")
if [[ $s == 201 ]] && replayed c20.later && cmp -s <(canon c20.later) <(canon "$first"); then
	ok "a later retry replays the first response byte for byte"
else
	fail "a later retry replays the first response byte for byte" "status $s" "$(diff <(canon c20.later) <(canon "$first"))"
fi
check_eq "the stored record: committed, status 201" "committed|201" \
	"$(psql_q -c "SELECT state, status FROM idem_get('$key', 'acme')")"

# calls KEY OP OUTCOME: lines of the call log for KEY, OP and OUTCOME
calls()
{
	grep -F "key=\"$1\" " "$T/calls.log" | grep -c " op=$2 outcome=$3 " || true
}
check_eq "the call log (libidem's observer): 20 http_run calls for the key, one fresh reserve and commit, 19 replays (and the later retry)" \
	"21 1 1 20" "$(calls "$key" http_run '[a-z_]*') $(calls "$key" reserve fresh) $(calls "$key" commit fresh) $(calls "$key" reserve replay)"
line=$(grep -F "key=\"$key\" " "$T/calls.log" | grep ' op=http_run outcome=fresh ' | head -n 1)
if [[ $line =~ ^ts=[0-9T:.-]+Z\ worker=[0-9]+\ req=\"POST\ /charges\"\ op=http_run\ outcome=fresh\ error=ok\ sqlstate=\"\"\ key=\"[^\"]+\"\ scope=\"acme\"\ attempt=1\ waited=[a-z]+\ leased=false\ status=201\ state=committed\ duration_us=[0-9]+$ ]]; then
	ok "a call log line: ts, worker, request, op, outcome, error, SQLSTATE, key, scope, attempt, waited, leased, status, state, duration"
else
	fail "a call log line in logfmt" "$line"
fi
charge_id=$(field c20.1 id)

# ---- 422: same key, another request ---------------------------------------

s=$(req mis POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" \
	-d '{"amount": 2001, "currency": "usd", "description": "twenty at once"}')
if [[ $s == 422 ]] && grep -q idempotency_key_reused "$T/mis.b"; then
	ok "same key, another body: 422 idempotency_key_reused"
else
	fail "same key, another body: 422" "status $s" "$(cat "$T/mis.b")"
fi
check_eq "... and no second charge" 1 "$(rows acme "$key")"
both='{"amount": 300, "currency": "usd", "to": "x@example.com", "subject": "both"}'
s1=$(req path1 POST /charges -H "Idempotency-Key: $P-path" -H "X-Tenant: acme" -d "$both")
s2=$(req path2 POST /emails -H "Idempotency-Key: $P-path" -H "X-Tenant: acme" -d "$both")
check_eq "same key and body on another path: 422 (the path is in the request hash)" "201 422" "$s1 $s2"

# ---- GET bypasses ----------------------------------------------------------

s1=$(req get1 GET "/charges/$charge_id" -H "X-Tenant: acme" -H "Idempotency-Key: $P-get")
s2=$(req get2 GET "/charges/$charge_id" -H "X-Tenant: acme" -H "Idempotency-Key: $P-get")
if [[ "$s1 $s2" == "200 200" ]] && ! replayed get1 && ! replayed get2 &&
	[[ $(field get1 id) == "$charge_id" && $(field get1 amount) == 2000 ]]; then
	ok "GET /charges/$charge_id with an Idempotency-Key: 200 twice, never replayed"
else
	fail "GET bypasses" "status $s1 $s2" "$(cat "$T/get1.h" "$T/get1.b")"
fi
check_eq "... and nothing stored under the GET's key" "" \
	"$(psql_q -c "SELECT state FROM idem_get('$P-get', 'acme')")"
check_eq "GET of another tenant's charge: 404" 404 \
	"$(req get3 GET "/charges/$charge_id" -H "X-Tenant: globex")"

# ---- 400: the key is required ---------------------------------------------

s=$(req nokey POST /charges -H "X-Tenant: acme" -d '{"amount": 100, "currency": "usd", "description": "'"$P"'-nokey"}')
if [[ $s == 400 ]] && grep -q idempotency_key_missing "$T/nokey.b"; then
	ok "POST /charges without Idempotency-Key: 400 idempotency_key_missing"
else
	fail "missing key: 400" "status $s" "$(cat "$T/nokey.b")"
fi
check_eq "... and no charge" 0 \
	"$(psql_q -c "SELECT count(*) FROM http_example.charges WHERE description = '$P-nokey'")"
check_eq "an empty key: 400" 400 \
	"$(req emptykey POST /charges -H "X-Tenant: acme" -H "Idempotency-Key;" -d '{"amount": 100, "currency": "usd"}')"
check_eq "a key over 255 bytes: 400" 400 \
	"$(req longkey POST /charges -H "X-Tenant: acme" -H "Idempotency-Key: $(printf 'k%.0s' $(seq 1 256))" -d '{"amount": 100, "currency": "usd"}')"
s1=$(req unp1 POST /charges-unprotected -H "X-Tenant: acme" -d '{"amount": 100, "currency": "usd"}')
s2=$(req unp2 POST /charges-unprotected -H "X-Tenant: acme" -H "Idempotency-Key: $P-unp" -d '{"amount": 100, "currency": "usd"}')
s3=$(req unp3 POST /charges-unprotected -H "X-Tenant: acme" -H "Idempotency-Key: $P-unp" -d '{"amount": 100, "currency": "usd"}')
if [[ "$s1 $s2 $s3" == "201 201 201" ]] && ! replayed unp3 && [[ $(field unp2 id) != "$(field unp3 id)" ]]; then
	ok "the excluded route POST /charges-unprotected runs every time, key or not"
else
	fail "excluded route" "status $s1 $s2 $s3"
fi

# ---- waiting disabled: 409 ------------------------------------------------

key=$P-wait
body='{"amount": 700, "currency": "usd", "description": "slow"}'
n=$(hook_lines)
req w1 POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -H "X-Test-Sleep-Ms: 2000" -d "$body" >"$T/w1.status" &
w1=$!
if wait_hook "$n"; then
	req w3 POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d "$body" >"$T/w3.status" &
	w3=$!
	s=$(req w2 POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -H "X-Idempotency-Wait: 0" -d "$body")
	if [[ $s == 409 ]] && grep -q idempotency_key_in_use "$T/w2.b" && [[ $(header w2 Retry-After) == 1 ]]; then
		ok "X-Idempotency-Wait: 0 while the key is in flight: 409 at once, Retry-After: 1"
	else
		fail "waiting disabled: 409" "status $s" "$(cat "$T/w2.h" "$T/w2.b")"
	fi
	wait "$w1" "$w3"
	if [[ $(cat "$T/w1.status") == 201 && $(cat "$T/w3.status") == 201 ]] && ! replayed w1 && replayed w3 &&
		cmp -s <(canon w1) <(canon w3); then
		ok "the request in flight got 201, a waiting duplicate got the same response replayed"
	else
		fail "in flight and waiting duplicate" "$(cat "$T/w1.status" "$T/w3.status")"
	fi
	s=$(req w4 POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -H "X-Idempotency-Wait: 0" -d "$body")
	if [[ $s == 201 ]] && replayed w4; then ok "the 409'd client's retry gets the replay"; else fail "retry after 409" "status $s"; fi
	check_eq "... one charge" 1 "$(rows acme "$key")"
else
	fail "the slow request started" "$(tail -n 5 "$T/service.err")"
	wait "$w1"
fi

# the same with the service's --no-wait flag: a second instance
SVC_MAIN_PID=$SVC_PID
SVC_MAIN_PORT=$SVC_PORT
if start_service 0 --no-wait; then
	SVC2_PID=$SVC_PID
	key=$P-nowait
	n=$(hook_lines)
	req nw1 POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -H "X-Test-Sleep-Ms: 1500" -d "$body" >"$T/nw1.status" &
	nw1=$!
	if wait_hook "$n"; then
		s=$(req nw2 POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d "$body")
		check_eq "service --no-wait: a duplicate of a request in flight gets 409" 409 "$s"
	else
		fail "service --no-wait: the slow request started"
	fi
	wait "$nw1"
	check_eq "... the request in flight 201" 201 "$(cat "$T/nw1.status")"
	kill -TERM "$SVC2_PID"
	{ wait "$SVC2_PID"; } 2>/dev/null
	SVC2_PID=
else
	fail "a second service with --no-wait starts"
fi
SVC_PID=$SVC_MAIN_PID
SVC_PORT=$SVC_MAIN_PORT
BASE=http://127.0.0.1:$SVC_PORT

# ---- 5xx and 429 are not stored; 4xx is --------------------------------------

for st in 500 503 429; do
	key=$P-fail-$st
	body='{"amount": 900, "currency": "usd", "description": "fails first"}'
	s1=$(req "f$st.1" POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -H "X-Test-Status: $st" -d "$body")
	r1=$(rows acme "$key")
	stored=$(psql_q -c "SELECT coalesce(state, 'absent') FROM idem_get('$key', 'acme')")
	s2=$(req "f$st.2" POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d "$body")
	if [[ "$s1 $r1 ${stored:-absent} $s2" == "$st 0 absent 201" ]] && ! replayed "f$st.2" && [[ $(rows acme "$key") == 1 ]]; then
		ok "a $st from the handler is not stored (charge rolled back, key released); the retry runs again: 201, one charge"
	else
		fail "$st not stored" "first $s1, rows $r1, stored '$stored', retry $s2, rows $(rows acme "$key")"
	fi
done
key=$P-declined
body='{"amount": 900, "currency": "usd", "card": "tok_chargeDeclined"}'
s1=$(req dec1 POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d "$body")
s2=$(req dec2 POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d "$body")
if [[ "$s1 $s2" == "402 402" ]] && replayed dec2 && cmp -s <(canon dec1) <(canon dec2); then
	ok "a 402 card_declined is a result: stored and replayed"
else
	fail "402 stored" "status $s1 $s2"
fi
key=$P-invalid
s1=$(req inv1 POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d '{"amount": -5, "currency": "usd"}')
s2=$(req inv2 POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d '{"amount": 5, "currency": "usd"}')
s3=$(req inv3 POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d '{"amount": 5, "currency": "usd"')
if [[ "$s1 $s2 $s3" == "400 201 400" ]] && grep -q parameter_invalid "$T/inv1.b"; then
	ok "a request failing validation (400) stores nothing: the corrected request with the key runs"
else
	fail "validation 400 not stored" "status $s1 $s2 $s3"
fi

# ---- Set-Cookie and Authorization ----------------------------------------------

key=$P-cookie
body='{"amount": 100, "currency": "usd", "remember": true}'
s1=$(req ck1 POST /charges -H "Idempotency-Key: $key" -H "Authorization: Bearer sk_test_acme" -d "$body")
s2=$(req ck2 POST /charges -H "Idempotency-Key: $key" -H "Authorization: Bearer sk_test_acme" -d "$body")
if [[ $s1 == 201 ]] && [[ -n $(header ck1 Set-Cookie) && -n $(header ck1 Authorization) ]]; then
	ok "the first response sets its cookie and token for its own client ($(header ck1 Set-Cookie | cut -d';' -f1))"
else
	fail "first response has Set-Cookie and Authorization" "$(cat "$T/ck1.h")"
fi
if [[ $s2 == 201 ]] && replayed ck2 && [[ -z $(header ck2 Set-Cookie) && -z $(header ck2 Authorization) ]] &&
	[[ $(header ck2 Location) == "$(header ck1 Location)" ]]; then
	ok "the replay carries neither Set-Cookie nor Authorization"
else
	fail "replay without Set-Cookie/Authorization" "$(cat "$T/ck2.h")"
fi
hdrs=$(psql_q -c "SELECT headers::text FROM idem_get('$key', 'acme')")
if [[ $hdrs == *Location* ]] && ! grep -qiE 'cookie|authorization|sid_|tok_|sk_test' <<<"$hdrs"; then
	ok "the stored headers hold neither: $hdrs"
else
	fail "stored headers without Set-Cookie/Authorization" "$hdrs"
fi

# ---- tenants -----------------------------------------------------------------

key=$P-tenant
body='{"amount": 4200, "currency": "eur"}'
s1=$(req t1 POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d "$body")
s2=$(req t2 POST /charges -H "Idempotency-Key: $key" -H "Authorization: Bearer sk_test_globex" -d "$body")
s3=$(req t3 POST /charges -H "Idempotency-Key: $key" -H "Authorization: Bearer sk_test_acme" -d "$body")
if [[ "$s1 $s2" == "201 201" ]] && ! replayed t1 && ! replayed t2 &&
	[[ $(field t1 id) != "$(field t2 id)" && $(rows acme "$key") == 1 && $(rows globex "$key") == 1 ]]; then
	ok "one key in two tenants (X-Tenant: acme, Bearer key of globex): two charges"
else
	fail "tenant scoping" "status $s1 $s2, rows $(rows acme "$key") $(rows globex "$key")"
fi
if [[ $s3 == 201 ]] && replayed t3 && [[ $(field t3 id) == "$(field t1 id)" ]]; then
	ok "acme's API key maps to acme's scope: replay of acme's charge"
else
	fail "API key maps to the tenant" "status $s3"
fi
check_eq "an unknown API key: 401" 401 \
	"$(req t4 POST /charges -H "Idempotency-Key: $key" -H "Authorization: Bearer sk_nope" -d "$body")"

# ---- emails: the step and its derived key downstream ------------------------------

key=$P-mail
body='{"to": "ada@example.com", "subject": "Your receipt", "text": "Thanks."}'
dk=$(downstream_key acme "$key")
s1=$(req m1 POST /emails -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d "$body")
s2=$(req m2 POST /emails -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d "$body")
if [[ "$s1 $s2" == "202 202" ]] && replayed m2 && cmp -s <(canon m1) <(canon m2) &&
	[[ $(field m1 downstream_key) == "$dk" ]]; then
	ok "POST /emails: 202, replayed; the mail API got the derived key idem_derive_key(run, 'send')"
else
	fail "POST /emails" "status $s1 $s2" "$(cat "$T/m1.b")" "want downstream key $dk"
fi
check_eq "the mail API: called once, sent once" "1 1" "$(sink_calls "$dk") $(sink_sent "$dk")"

# ---- kill -9 in the middle of a request ---------------------------------------------

# restart_service: same port, so the client retries the same URL
restart_service()
{
	start_service "$SVC_PORT"
}

key=$P-kill-charge
body='{"amount": 12345, "currency": "usd", "description": "killed mid-flight"}'
n=$(hook_lines)
req k1 POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -H "X-Test-Sleep-Ms: 10000" -d "$body" >"$T/k1.status" &
k1=$!
if wait_hook "$n"; then
	kill9_service
	wait "$k1"
	check_eq "kill -9 while the charge handler sleeps after its insert: the client gets no answer" 000 "$(cat "$T/k1.status")"
	check_eq "... and the insert rolled back with the reservation" 0 "$(rows acme "$key")"
	if restart_service; then
		s1=$(req k2 POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d "$body")
		s2=$(req k3 POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d "$body")
		if [[ "$s1 $s2" == "201 201" ]] && ! replayed k2 && replayed k3 && [[ $(rows acme "$key") == 1 ]]; then
			ok "after restarting, the retry charges once (201) and the next replays: one charge row"
		else
			fail "retry after kill -9 (charge)" "status $s1 $s2, rows $(rows acme "$key")"
		fi
	else
		fail "the service restarts on port $SVC_PORT" "$(tail -n 5 "$T/service.err")"
	fi
else
	fail "the slow charge started" "$(tail -n 5 "$T/service.err")"
fi

# killed between the mail API's answer and the step's commit: the retry
# calls the mail API again with the same derived key, which does not send
key=$P-kill-in-step
body='{"to": "bob@example.com", "subject": "Welcome"}'
dk=$(downstream_key acme "$key")
n=$(hook_lines)
req ks1 POST /emails -H "Idempotency-Key: $key" -H "X-Tenant: acme" -H "X-Test-Sleep-Ms: 10000" \
	-H "X-Test-Sleep-At: in-step" -d "$body" >"$T/ks1.status" &
ks1=$!
if [[ -n $SVC_PID ]] && wait_hook "$n"; then
	check_eq "kill -9 between the mail API call and the step's commit: the mail API was called" "1 1" \
		"$(sink_calls "$dk") $(sink_sent "$dk")"
	kill9_service
	wait "$ks1"
	if restart_service; then
		s1=$(req ks2 POST /emails -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d "$body")
		s2=$(req ks3 POST /emails -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d "$body")
		if [[ "$s1 $s2" == "202 202" ]] && ! replayed ks2 && replayed ks3 && [[ $(field ks2 attempt) == 2 ]]; then
			ok "the retry takes the key over (attempt 2) and answers 202; the next replays"
		else
			fail "retry after kill -9 (in step)" "status $s1 $s2" "$(cat "$T/ks2.b")"
		fi
		check_eq "the mail API: called twice with the same key, the email sent once" "2 1" \
			"$(sink_calls "$dk") $(sink_sent "$dk")"
	else
		fail "the service restarts on port $SVC_PORT"
	fi
else
	fail "the slow email started" "$(tail -n 5 "$T/service.err")"
	wait "$ks1"
fi

# killed after the step's commit, before the request's: the retry replays
# the step and does not call the mail API at all
key=$P-kill-after-step
body='{"to": "cy@example.com", "subject": "Invoice"}'
dk=$(downstream_key acme "$key")
n=$(hook_lines)
req ka1 POST /emails -H "Idempotency-Key: $key" -H "X-Tenant: acme" -H "X-Test-Sleep-Ms: 10000" \
	-H "X-Test-Sleep-At: after-step" -d "$body" >"$T/ka1.status" &
ka1=$!
if [[ -n $SVC_PID ]] && wait_hook "$n"; then
	kill9_service
	wait "$ka1"
	if restart_service; then
		s1=$(req ka2 POST /emails -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d "$body")
		if [[ $s1 == 202 ]] && [[ $(field ka2 attempt) == 2 && $(field ka2 message_id) == "$(sink "/stats/$dk" | sed -n 's/.*"id": "\([^"]*\)".*/\1/p')" ]]; then
			ok "kill -9 after the step's commit: the retry answers 202 with the same message id"
		else
			fail "retry after kill -9 (after step)" "status $s1" "$(cat "$T/ka2.b")"
		fi
		check_eq "the mail API: called once, the email sent once (the step replayed)" "1 1" \
			"$(sink_calls "$dk") $(sink_sent "$dk")"
	else
		fail "the service restarts on port $SVC_PORT"
	fi
else
	fail "the slow email started" "$(tail -n 5 "$T/service.err")"
	wait "$ka1"
fi

check_eq "the mail API over the whole run: 3 emails sent for 3 keys, 4 calls" \
	'{"calls": 4, "sent": 3, "keys": 3}' "$(sink /stats)"

# ---- problem details (RFC 9457) ---------------------------------------------

PB=https://idempotency.dev/problems/
HAVE_JSON=1
if command -v jq >/dev/null 2>&1; then
	# jget NAME FILTER: a jq filter on the body of NAME ("" when not JSON)
	jget() { jq -r "$2" "$T/$1.b" 2>/dev/null; }
elif command -v python3 >/dev/null 2>&1; then
	# the same for a filter that is a path (.a.b), with python3's json
	jget()
	{
		python3 -c 'import json, sys
v = json.load(open(sys.argv[1], encoding="utf-8"))
for part in sys.argv[2].split(".")[1:]:
    v = v[part]
print(v)' "$T/$1.b" "$2" 2>/dev/null
	}
else
	HAVE_JSON=0
fi
ascii_body() { ! LC_ALL=C grep -q '[^ -~]' "$T/$1.b"; }

# problem NAME STATUS GOT TYPE [KEY]: the answer NAME is problem details
# of TYPE with STATUS (GOT: the status curl saw), a title, and a detail
# naming KEY as Idempotency-Key "KEY"
problem()
{
	local name=$1 want=$2 got=$3 type=$4 key=${5-} ct detail
	ct=$(header "$name" Content-Type)
	detail=$(jget "$name" .detail)
	if [[ $got == "$want" && $ct == application/problem+json &&
		$(jget "$name" .type) == "$PB$type" && -n $(jget "$name" .title) &&
		$(jget "$name" .status) == "$want" && -n $detail ]] &&
		{ [[ -z $key ]] || [[ $detail == *"Idempotency-Key \"$key\""* ]]; } && ascii_body "$name"; then
		ok "$DESC, ${ACCEPT:-Accept: application/problem+json}: $want, $ct, type $type, title, status, detail${key:+ naming the key}: $(jget "$name" .title)"
	else
		fail "$DESC, ${ACCEPT:-Accept: application/problem+json}: problem details" \
			"status $got (want $want), Content-Type $ct" "$(cat "$T/$name.b")"
	fi
}

# stripe NAME STATUS GOT CODE: the answer NAME is {"error": {...}} with the
# code CODE (or, for errors without one, the type CODE)
stripe()
{
	local name=$1 want=$2 got=$3 code=$4 ct
	ct=$(header "$name" Content-Type)
	if [[ $got == "$want" && $ct == application/json ]] &&
		grep -qE "\"(code|type)\": \"$code\"" "$T/$name.b" && grep -q '^{"error": {' "$T/$name.b"; then
		ok "$DESC, ${ACCEPT:-no Accept header}: $want, application/json, the Stripe shape ($code)"
	else
		fail "$DESC, ${ACCEPT:-no Accept header}: the Stripe shape" "status $got (want $want), Content-Type $ct" "$(cat "$T/$name.b")"
	fi
}

if ((!HAVE_JSON)); then
	skip "problem details (RFC 9457)" "neither jq nor python3 to read JSON"
else
	AP=(-H "Accept: application/problem+json")
	ACCEPT=
	charge='{"amount": 100, "currency": "usd", "description": "problems"}'

	DESC="400 a missing key"
	problem pd-miss 400 "$(req pd-miss POST /charges -H "X-Tenant: acme" "${AP[@]}" -d "$charge")" missing-key
	stripe pd-miss-s 400 "$(req pd-miss-s POST /charges -H "X-Tenant: acme" -d "$charge")" idempotency_key_missing
	ACCEPT="Accept: */*"
	stripe pd-miss-any 400 "$(req pd-miss-any POST /charges -H "X-Tenant: acme" -H "Accept: */*" -d "$charge")" idempotency_key_missing
	ACCEPT="Accept: application/json, application/problem+json;q=0"
	stripe pd-miss-q0 400 "$(req pd-miss-q0 POST /charges -H "X-Tenant: acme" \
		-H "Accept: application/json, application/problem+json;q=0" -d "$charge")" idempotency_key_missing
	ACCEPT="Accept: text/html, application/problem+json;q=0.5"
	problem pd-miss-q5 400 "$(req pd-miss-q5 POST /charges -H "X-Tenant: acme" \
		-H "Accept: text/html, application/problem+json;q=0.5" -d "$charge")" missing-key
	ACCEPT=

	long=$(printf 'k%.0s' $(seq 1 300))
	DESC="400 a key over 255 bytes"
	problem pd-long 400 "$(req pd-long POST /charges -H "X-Tenant: acme" -H "Idempotency-Key: $long" "${AP[@]}" -d "$charge")" \
		invalid-key "${long:0:64}..."
	stripe pd-long-s 400 "$(req pd-long-s POST /charges -H "X-Tenant: acme" -H "Idempotency-Key: $long" -d "$charge")" \
		idempotency_key_missing

	# a key with quotes, a backslash and non-ASCII: escaped in the detail
	key="$P-pd-\"q\"\\-é"
	s=$(req pd-first POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d "$charge")
	check_eq "a charge under a key with quotes, a backslash and an é" 201 "$s"
	DESC="422 the key reused with another body"
	problem pd-reuse 422 "$(req pd-reuse POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" "${AP[@]}" \
		-d '{"amount": 101, "currency": "usd"}')" key-reused "$key"
	grep -qF '\"q\"\\-\u00e9\"' "$T/pd-reuse.b" &&
		ok "... the key JSON-escaped in the body: \\\" \\\\ and \\u00e9 ($(jget pd-reuse .detail))" ||
		fail "... the key JSON-escaped in the body" "$(cat "$T/pd-reuse.b")"
	stripe pd-reuse-s 422 "$(req pd-reuse-s POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" \
		-d '{"amount": 101, "currency": "usd"}')" idempotency_key_reused

	key=$P-pd-flight
	n=$(hook_lines)
	req pd-f0 POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" -H "X-Test-Sleep-Ms: 1500" -d "$charge" >"$T/pd-f0.status" &
	f0=$!
	if wait_hook "$n"; then
		DESC="409 a request in flight (X-Idempotency-Wait: 0)"
		problem pd-flight 409 "$(req pd-flight POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" \
			-H "X-Idempotency-Wait: 0" "${AP[@]}" -d "$charge")" in-flight "$key"
		check_eq "... with Retry-After: 1" 1 "$(header pd-flight Retry-After)"
		stripe pd-flight-s 409 "$(req pd-flight-s POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" \
			-H "X-Idempotency-Wait: 0" -d "$charge")" idempotency_key_in_use
	else
		fail "the slow request for the 409 started"
	fi
	wait "$f0"

	key=$P-pd-handler
	DESC="500 the handler failed (X-Test-Handler-Fail)"
	problem pd-hf 500 "$(req pd-hf POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" \
		-H "X-Test-Handler-Fail: 1" "${AP[@]}" -d "$charge")" handler-failed "$key"
	check_eq "... the charge rolled back and the key released" "0 absent" \
		"$(rows acme "$key") $(psql_q -c "SELECT coalesce((SELECT state FROM idem_get('$key', 'acme')), 'absent')")"
	stripe pd-hf-s 500 "$(req pd-hf-s POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" \
		-H "X-Test-Handler-Fail: 1" -d "$charge")" api_error
	check_eq "... the call log has the handler's failure: http_run error handler" 2 \
		"$(grep -F "key=\"$key\" " "$T/calls.log" | grep -c ' op=http_run outcome=error error=handler ')"

	# a store that cannot take the response: a body over idem.max_body_bytes
	SVC_MAIN_PID=$SVC_PID
	SVC_MAIN_PORT=$SVC_PORT
	if PGOPTIONS="-c idem.max_body_bytes=64" start_service 0; then
		SVC2_PID=$SVC_PID
		key=$P-pd-store
		DESC="500 the store failed (a response over idem.max_body_bytes)"
		problem pd-sf 500 "$(req pd-sf POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" "${AP[@]}" \
			-d "$charge")" store-failed "$key"
		stripe pd-sf-s 500 "$(req pd-sf-s POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" \
			-d "$charge")" api_error
		check_eq "... and no charge was kept" 0 "$(rows acme "$key")"
		kill -TERM "$SVC2_PID"
		{ wait "$SVC2_PID"; } 2>/dev/null
		SVC2_PID=

		# a lease lost: the service with a lease of 1 s is stopped (SIGSTOP,
		# as a paused VM) while its handler runs, the lease runs out, another
		# service takes the key over and answers; the first one, continued,
		# gets its commit refused
		if start_service 0 --lease 1s; then
			SVC2_PID=$SVC_PID
			BASE2=http://127.0.0.1:$SVC_PORT
			BASE=http://127.0.0.1:$SVC_MAIN_PORT
			key=$P-pd-lease
			mail='{"to": "lease@example.com", "subject": "Lease"}'
			dk=$(downstream_key acme "$key")
			n=$(hook_lines)
			curl -sS --max-time 40 -o "$T/pd-lost.b" -D "$T/pd-lost.h" -w '%{http_code}' \
				-X POST "$BASE2/emails" -H "Idempotency-Key: $key" -H "X-Tenant: acme" "${AP[@]}" \
				-H "X-Test-Sleep-Ms: 3000" -H "X-Test-Sleep-At: after-step" -d "$mail" \
				>"$T/pd-lost.status" 2>"$T/pd-lost.err" &
			lost_pid=$!
			if wait_hook "$n"; then
				kill -STOP "$SVC2_PID"
				sleep 1.6
				s=$(req pd-taken POST /emails -H "Idempotency-Key: $key" -H "X-Tenant: acme" -d "$mail")
				kill -CONT "$SVC2_PID"
				wait "$lost_pid"
				check_eq "the lease ran out while its service was stopped: another takes the key over (202, attempt 2)" \
					"202 2" "$s $(field pd-taken attempt)"
				DESC="409 the lease lost (its commit refused once continued)"
				problem pd-lost 409 "$(cat "$T/pd-lost.status")" lease-lost "$key"
				check_eq "... the stored response is the new owner's, the mail sent once" "committed|2 1 1" \
					"$(psql_q -c "SELECT state, attempt FROM idem_get('$key', 'acme')") $(sink_calls "$dk") $(sink_sent "$dk")"
			else
				fail "the leased request started"
				wait "$lost_pid"
			fi
			kill -TERM "$SVC2_PID"
			{ wait "$SVC2_PID"; } 2>/dev/null
			SVC2_PID=
		else
			fail "a service with --lease 1s starts"
		fi
	else
		fail "a service with idem.max_body_bytes = 64 starts"
	fi
	SVC_PID=$SVC_MAIN_PID
	SVC_PORT=$SVC_MAIN_PORT
	BASE=http://127.0.0.1:$SVC_PORT
fi

# ---- behind a transaction pooler ------------------------------------------------

# burst NAME PATH KEY BODY [CURL ARGS...]: 20 concurrent identical requests
# (the one that runs sleeps in its handler, so the others arrive while it
# is in flight); then checks that all 20 got the same status, the same
# headers (but Date and Idempotent-Replayed) and the same body, byte for
# byte, and that 19 were replays.  WHAT describes the run in the checks.
burst()
{
	local name=$1 path=$2 key=$3 body=$4 i same=1 nrep=0 statuses
	shift 4
	local pids=()
	for i in $(seq 1 20); do
		req "$name.$i" POST "$path" -H "Idempotency-Key: $key" -H "X-Tenant: acme" \
			"$@" -d "$body" >"$T/$name.$i.status" &
		pids+=($!)
	done
	wait "${pids[@]}"
	statuses=$(for i in $(seq 1 20); do printf "%s\n" "$(<"$T/$name.$i.status")"; done |
		sort | uniq -c | awk '{print $1 "x" $2}')
	BURST_STATUS=$statuses
	canon "$name.1" >"$T/$name.canon"
	for i in $(seq 2 20); do
		if ! canon "$name.$i" | cmp -s - "$T/$name.canon"; then
			same=0
			echo "# $WHAT: response $i differs:"
			diff <(canon "$name.$i") "$T/$name.canon" | sed 's/^/#   /'
		fi
	done
	for i in $(seq 1 20); do replayed "$name.$i" && nrep=$((nrep + 1)); done
	if ((same)) && ((nrep == 19)); then
		ok "$WHAT: 20 identical responses (status, headers but Date and Idempotent-Replayed, body byte for byte), 19 of them replays"
	else
		fail "$WHAT: 20 identical responses, 19 replays" "$nrep replays" "$(tail -n 5 "$T/service.err")"
	fi
}

# bouncer_xacts: transactions PgBouncer has run for the suite's database
bouncer_xacts()
{
	psql -XAtq -F ' ' -h "$BOUNCER_HOST" -p "$BOUNCER_PORT" -U postgres -d pgbouncer -c 'SHOW STATS' |
		awk -v db="$DB" '$1 == db { print $2 }'
}

if [[ ! -x /usr/sbin/pgbouncer ]]; then
	skip "the service behind PgBouncer in transaction mode" "pgbouncer is not installed"
elif ! out=$(bash "$IDEM_ROOT/tools/pgbouncer.sh" start "$T/pgbouncer" transaction 3 2>&1); then
	fail "PgBouncer starts in transaction mode with a pool of 3 (tools/pgbouncer.sh)" "$out"
else
	BOUNCER=$T/pgbouncer
	BOUNCER_HOST=$(. "$BOUNCER/env" && printf '%s' "$PGHOST")
	BOUNCER_PORT=$(. "$BOUNCER/env" && printf '%s' "$PGPORT")
	ok "PgBouncer runs in transaction mode with a pool of 3 on port $BOUNCER_PORT"
	SVC_MAIN_PID=$SVC_PID
	SVC_MAIN_PORT=$SVC_PORT
	for lease in 10s auto; do
		if [[ $lease == auto ]]; then
			args=()
			how="no --lease (detected proxy)"
		else
			args=(--lease "$lease")
			how="--lease $lease"
		fi
		if ! start_service 0 --dsn "host=$BOUNCER_HOST port=$BOUNCER_PORT" "${args[@]}"; then
			fail "the service starts through PgBouncer with $how" "$(tail -n 5 "$T/service.err")"
			continue
		fi
		SVC2_PID=$SVC_PID
		xacts=$(bouncer_xacts)

		# autocommit: the waiters wait in slices, the pool's connections
		# are free between them, so the owner can renew and commit
		key=$P-pooled-mail-$lease
		dk=$(downstream_key acme "$key")
		WHAT="through PgBouncer (pool of 3), $how, 20 concurrent POST /emails"
		burst "pm-$lease" /emails "$key" '{"to": "pool@example.com", "subject": "Pooled"}' \
			-H "X-Test-Sleep-Ms: 1500" -H "X-Test-Sleep-At: after-step"
		check_eq "$WHAT: all 202" "20x202" "$BURST_STATUS"
		check_eq "$WHAT: the mail API was called once and sent one mail" "1 1" \
			"$(sink_calls "$dk") $(sink_sent "$dk")"
		check_eq "$WHAT: the key is committed once, attempt 1" "committed|202|1" \
			"$(psql_q -c "SELECT state, status, attempt FROM idem_get('$key', 'acme')")"
		check_eq "$WHAT: the call log has one fresh reserve, lease-owned (leased=true), and 19 replays" "1 19" \
			"$(grep -F "key=\"$key\" " "$T/calls.log" | grep -c ' op=reserve outcome=fresh .* leased=true ') $(calls "$key" reserve replay)"

		# one transaction per request: reserve, insert, store, COMMIT
		key=$P-pooled-charge-$lease
		WHAT="through PgBouncer (pool of 3), $how, 20 concurrent POST /charges"
		burst "pc-$lease" /charges "$key" '{"amount": 1500, "currency": "usd", "description": "pooled"}' \
			-H "X-Test-Sleep-Ms: 1000"
		check_eq "$WHAT: all 201" "20x201" "$BURST_STATUS"
		check_eq "$WHAT: one charge row" 1 "$(rows acme "$key")"

		if [[ $lease == 10s ]]; then
			# a charge's handler running past a third of its lease: the
			# reservation lives in the request's transaction, where nobody
			# else sees it, so it is not renewed (a renewal from another
			# connection would not find it and take the lease for lost)
			key=$P-pooled-long
			s=$(req plong POST /charges -H "Idempotency-Key: $key" -H "X-Tenant: acme" \
				-H "X-Test-Sleep-Ms: 4000" -d '{"amount": 77, "currency": "usd"}')
			check_eq "through PgBouncer, --lease 10s: a charge whose handler runs 4 s (past a third of the lease) is made: 201, one row" \
				"201 1" "$s $(rows acme "$key")"
		fi

		after=$(bouncer_xacts)
		if [[ -n $after ]] && ((after - ${xacts:-0} >= 40)); then
			ok "the requests went through PgBouncer ($((after - ${xacts:-0})) transactions)"
		else
			fail "the requests went through PgBouncer" "SHOW STATS: ${xacts:-none} before, ${after:-none} after"
		fi

		if [[ $lease == auto ]] && ((HAVE_JSON)); then
			# the database gone from under the service: PgBouncer stopped
			bash "$IDEM_ROOT/tools/pgbouncer.sh" stop "$BOUNCER" >/dev/null 2>&1
			BOUNCER=
			key=$P-pooled-gone
			mail='{"to": "gone@example.com", "subject": "Gone"}'
			DESC="503 the database unreachable (PgBouncer stopped)"
			problem pd-gone 503 "$(req pd-gone POST /emails -H "Idempotency-Key: $key" -H "X-Tenant: acme" \
				-H "Accept: application/problem+json" -d "$mail")" store-unavailable "$key"
			check_eq "... with Retry-After: 1" 1 "$(header pd-gone Retry-After)"
			stripe pd-gone-s 503 "$(req pd-gone-s POST /emails -H "Idempotency-Key: $key" -H "X-Tenant: acme" \
				-d "$mail")" database_unavailable
			DESC="503 the database unreachable, a charge (its BEGIN fails)"
			problem pd-gone-c 503 "$(req pd-gone-c POST /charges -H "Idempotency-Key: $key-c" -H "X-Tenant: acme" \
				-H "Accept: application/problem+json" -d '{"amount": 1, "currency": "usd"}')" store-unavailable "$key-c"
		fi
		kill -TERM "$SVC2_PID"
		wait "$SVC2_PID"
		check_eq "the service through PgBouncer ($how) stops on SIGTERM with exit 0" 0 "$?"
		SVC2_PID=
	done
	SVC_PID=$SVC_MAIN_PID
	SVC_PORT=$SVC_MAIN_PORT
	BASE=http://127.0.0.1:$SVC_PORT
	if [[ -n $BOUNCER ]]; then
		bash "$IDEM_ROOT/tools/pgbouncer.sh" stop "$BOUNCER" >/dev/null 2>&1
		BOUNCER=
	fi
fi

# ---- stop -----------------------------------------------------------------------

if [[ -n $SVC_PID ]]; then
	kill -TERM "$SVC_PID"
	wait "$SVC_PID"
	rc=$?
	SVC_PID=
	check_eq "the service stops on SIGTERM with exit 0" 0 "$rc"
fi
kill -TERM "$SINK_PID"
wait "$SINK_PID"
SINK_PID=

finish
