/*-------------------------------------------------------------------------
 *
 * idem_args.c
 *	  The arguments of the SQL-callable functions, checked in one place.
 *
 * Every function of the extension takes its arguments through these
 * checkers, one per kind (key and scope, request hash, owner token, ttl,
 * wait, lease), so that a bad value gets the same class-22 error, in the
 * same words and with a detail naming the key, whichever function it was
 * given to, and so that nothing downstream ever sees a value it cannot
 * hold (a key or scope over IDEM_MAX_KEY_BYTES, say).
 *
 * A call may have fewer arguments than the function declares: the planner
 * leaves out trailing arguments that are their defaults (idem_args_support,
 * below), and functions of versions before 1.2 have no owner or lease.  An
 * argument a call does not have is its SQL default: NULL, '' for a scope,
 * '{}' for the headers of idem_commit.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_proc.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "nodes/makefuncs.h"
#include "nodes/supportnodes.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/jsonb.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "idempotency.h"

/* at most the first 32 characters of a text, for a message */
static char *
clipped(text *t)
{
	const char *s = VARDATA_ANY(t);
	int			len = VARSIZE_ANY_EXHDR(t);
	int			n = pg_mbcliplen(s, len, 32);

	return psprintf("%.*s%s", n, s, n < len ? "..." : "");
}

/*
 * Validates and extracts the key and scope arguments (a call without the
 * scope argument is in the default scope, '').
 */
void
idem_arg_key(FunctionCallInfo fcinfo, int keyarg, int scopearg, IdemKey *k)
{
	bool		has_scope = scopearg < PG_NARGS();
	text	   *t;

	if (PG_ARGISNULL(keyarg))
		user_error(
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("idempotency key must not be null"),
				 has_scope && PG_ARGISNULL(scopearg) ? 0 :
				 errdetail("The key given in scope \"%s\" is null.",
						   has_scope ? clipped(PG_GETARG_TEXT_PP(scopearg)) : "")));
	if (has_scope && PG_ARGISNULL(scopearg))
		user_error(
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("idempotency scope must not be null"),
				 errdetail("The scope given for key \"%s\" is null.",
						   clipped(PG_GETARG_TEXT_PP(keyarg))),
				 errhint("Use the empty string for the default scope.")));

	if (has_scope)
	{
		t = PG_GETARG_TEXT_PP(scopearg);
		k->scope = text_to_cstring(t);
		k->scope_len = VARSIZE_ANY_EXHDR(t);
	}
	else
	{
		k->scope = pstrdup("");
		k->scope_len = 0;
	}
	t = PG_GETARG_TEXT_PP(keyarg);
	k->key = text_to_cstring(t);
	k->key_len = VARSIZE_ANY_EXHDR(t);

	if (k->key_len == 0)
		user_error(
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency key must not be empty"),
				 errdetail("Key \"\" in scope \"%s\".", k->scope)));
	if (k->key_len > IDEM_MAX_KEY_BYTES)
		user_error(
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("idempotency key is too long"),
				 errdetail("Key \"%.*s...\" in scope \"%.*s\" is %d bytes; the limit is %d bytes.",
						   pg_mbcliplen(k->key, k->key_len, 32), k->key,
						   pg_mbcliplen(k->scope, k->scope_len, IDEM_MAX_KEY_BYTES),
						   k->scope, k->key_len, IDEM_MAX_KEY_BYTES)));
	if (k->scope_len > IDEM_MAX_KEY_BYTES)
		user_error(
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("idempotency scope is too long"),
				 errdetail("Scope \"%.*s...\" of key \"%s\" is %d bytes; the limit is %d bytes.",
						   pg_mbcliplen(k->scope, k->scope_len, 32), k->scope,
						   k->key, k->scope_len, IDEM_MAX_KEY_BYTES)));

	idem_check_scope(k->scope);
}

char *
idem_arg_hash(FunctionCallInfo fcinfo, int arg, const IdemKey *k)
{
	text	   *t;

	if (idem_arg_isnull(fcinfo, arg))
		return NULL;
	t = PG_GETARG_TEXT_PP(arg);
	if (VARSIZE_ANY_EXHDR(t) > IDEM_MAX_HASH_BYTES)
		user_error(
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("request hash is too long"),
				 KEY_DETAIL(k, " was given a request hash of %d bytes; the limit is %d bytes.",
							(int) VARSIZE_ANY_EXHDR(t),
							IDEM_MAX_HASH_BYTES)));
	return text_to_cstring(t);
}

/* Microseconds of an interval, months counted as 30 days */
int64
idem_interval_usecs(const Interval *iv)
{
	int128		us;

	us = (int128) iv->time +
		(int128) iv->day * USECS_PER_DAY +
		(int128) iv->month * DAYS_PER_MONTH * USECS_PER_DAY;
	if (us > PG_INT64_MAX)
		return PG_INT64_MAX;
	if (us < PG_INT64_MIN)
		return PG_INT64_MIN;
	return (int64) us;
}

TimestampTz
idem_add_interval(TimestampTz ts, const Interval *iv)
{
	return DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
												   TimestampTzGetDatum(ts),
												   IntervalPGetDatum(iv)));
}


char *
idem_interval_text(const Interval *iv)
{
	return DatumGetCString(DirectFunctionCall1(interval_out,
											   IntervalPGetDatum(iv)));
}

/*
 * A ttl or a lease: positive, and no longer than idem.max_ttl.
 */
static void
check_period(const IdemKey *k, const char *what, const Interval *iv,
			 TimestampTz now)
{
	if (idem_interval_usecs(iv) > (int64) idem_max_ttl * USECS_PER_SEC)
		user_error(
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is longer than idem.max_ttl", what),
				 KEY_DETAIL(k, " was given %s %s; idem.max_ttl is %d seconds.",
							what, idem_interval_text(iv),
							idem_max_ttl)));
	if (idem_add_interval(now, iv) <= now)
		user_error(
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be positive", what),
				 KEY_DETAIL(k, " was given %s %s.",
							what, idem_interval_text(iv))));
}

/*
 * The owner token argument: NULL, or 1 to IDEM_MAX_TOKEN_BYTES bytes.
 * Functions of versions before 1.2 have no such argument.
 */
char *
idem_arg_token(FunctionCallInfo fcinfo, int arg, const IdemKey *k,
			   bool required)
{
	text	   *t;
	int			len;

	if (idem_arg_isnull(fcinfo, arg))
	{
		if (required)
			user_error(
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("owner token must not be null"),
					 errdetail("The owner token given for key \"%s\" in scope \"%s\" is null.",
							   k->key, k->scope),
					 errhint("Pass the owner token that idem_reserve returned.")));
		return NULL;
	}
	t = PG_GETARG_TEXT_PP(arg);
	len = VARSIZE_ANY_EXHDR(t);
	if (len == 0)
		user_error(
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("owner token must not be empty"),
				 KEY_DETAIL(k, " was given an empty owner token."),
				 errhint("Pass NULL to have idem_reserve make a token.")));
	if (len > IDEM_MAX_TOKEN_BYTES)
		user_error(
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("owner token is too long"),
				 KEY_DETAIL(k, " was given an owner token of %d bytes; the limit is %d bytes.",
							len, IDEM_MAX_TOKEN_BYTES)));
	return text_to_cstring(t);
}

void
idem_require_leases(const IdemKey *k)
{
	if (!idem_storage_has_leases())
		user_error(
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("lease owners need version 1.2 of extension \"idempotency\""),
				 KEY_DETAIL(k, "."),
				 errhint("Run ALTER EXTENSION idempotency UPDATE.")));
}

/* A new owner token: 128 random bits, in hex */
char *
idem_new_token(void)
{
	uint8		bytes[16];
	char	   *token = palloc(sizeof(bytes) * 2 + 1);

	if (!pg_strong_random(bytes, sizeof(bytes)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random owner token")));
	hex_encode((const char *) bytes, sizeof(bytes), token);
	token[sizeof(bytes) * 2] = '\0';
	return token;
}

/*
 * Who idem_reserve reserves for: the token and lease arguments, else the
 * setting idem.lease.  A positive lease makes a lease owner (whose token,
 * when none is given, is made with the reservation: until then the caller
 * has none to be recognised by); zero, a session owner.
 */
void
idem_arg_owner(FunctionCallInfo fcinfo, int tokenarg, int leasearg,
			   const IdemKey *k, TimestampTz now, IdemOwner *owner)
{
	memset(owner, 0, sizeof(IdemOwner));
	owner->token = idem_arg_token(fcinfo, tokenarg, k, false);

	if (!idem_arg_isnull(fcinfo, leasearg))
	{
		Interval   *iv = PG_GETARG_INTERVAL_P(leasearg);
		int64		us = idem_interval_usecs(iv);

		if (us < 0)
			user_error(
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("lease must not be negative"),
					 KEY_DETAIL(k, " was given lease %s.",
								idem_interval_text(iv)),
					 errhint("A lease of zero makes a session owner.")));
		if (us > 0)
		{
			owner->lease = true;
			owner->lease_len = *iv;
		}
	}
	else if (idem_lease > 0)
	{
		owner->lease = true;
		owner->lease_len.time = (int64) idem_lease * 1000;
	}

	/*
	 * A key table distributed by Citus has lease owners only: the session
	 * that runs a call on a worker is a pooled connection of the
	 * coordinator's, not the application's.
	 */
	if (!owner->lease && idem_storage_distributed())
	{
		owner->lease = true;
		owner->lease_len.time = idem_lease > 0 ?
			(int64) idem_lease * 1000 : IDEM_DISTRIBUTED_LEASE_US;
	}
	if (!owner->lease)
		return;

	check_period(k, "lease", &owner->lease_len, now);
	idem_require_leases(k);
}

/*
 * The ttl argument: NULL means idem.default_ttl.
 */
void
idem_arg_ttl(FunctionCallInfo fcinfo, int arg, const IdemKey *k,
			 TimestampTz now, Interval *ttl)
{
	if (idem_arg_isnull(fcinfo, arg))
	{
		memset(ttl, 0, sizeof(Interval));
		ttl->time = (int64) idem_default_ttl * USECS_PER_SEC;
	}
	else
		*ttl = *PG_GETARG_INTERVAL_P(arg);
	check_period(k, "ttl", ttl, now);
}

/*
 * The wait_timeout argument, in microseconds: NULL means idem.wait_timeout;
 * zero, do not wait.
 */
int64
idem_arg_wait(FunctionCallInfo fcinfo, int arg, const IdemKey *k)
{
	Interval   *w;
	int64		wait_us;

	if (idem_arg_isnull(fcinfo, arg))
		return (int64) idem_wait_timeout * 1000;
	w = PG_GETARG_INTERVAL_P(arg);
	wait_us = idem_interval_usecs(w);
	if (wait_us < 0)
		user_error(
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("wait_timeout must not be negative"),
				 KEY_DETAIL(k, " was given wait_timeout %s.",
							idem_interval_text(w))));
	return wait_us;
}

/*
 * The lease argument of idem_extend: positive, or NULL (returns false).
 */
bool
idem_arg_lease(FunctionCallInfo fcinfo, int arg, const IdemKey *k,
			   TimestampTz now, Interval *lease)
{
	if (idem_arg_isnull(fcinfo, arg))
		return false;
	*lease = *PG_GETARG_INTERVAL_P(arg);
	check_period(k, "lease", lease, now);
	return true;
}

/*
 * idem_args_support(internal) RETURNS internal
 *
 * The planner support function of idem_reserve, idem_commit, idem_release,
 * idem_get and idem_extend.  The parser fills in the defaults of the
 * arguments a call leaves out, and the executor then evaluates every one of
 * them at every execution: a replay, the most common call, gives two of
 * idem_reserve's seven.  Asked to simplify a call, this leaves out its
 * trailing arguments that are constants equal to their defaults, which the
 * functions take as those defaults (see the top of this file).  Nothing
 * else changes: the call is to the same function, and EXPLAIN VERBOSE
 * shows it as written without those arguments.
 */
PG_FUNCTION_INFO_V1(idem_args_support);

Datum
idem_args_support(PG_FUNCTION_ARGS)
{
	Node	   *rawreq = (Node *) PG_GETARG_POINTER(0);
	FuncExpr   *call;
	FuncExpr   *shorter;
	HeapTuple	proc;
	Datum		d;
	bool		isnull;
	List	   *defaults = NIL;
	int			nargs;
	int			first_default;
	int			keep;

	if (!IsA(rawreq, SupportRequestSimplify))
		PG_RETURN_POINTER(NULL);
	call = ((SupportRequestSimplify *) rawreq)->fcall;
	nargs = list_length(call->args);

	proc = SearchSysCache1(PROCOID, ObjectIdGetDatum(call->funcid));
	if (!HeapTupleIsValid(proc))
		elog(ERROR, "cache lookup failed for function %u", call->funcid);
	d = SysCacheGetAttr(PROCOID, proc, Anum_pg_proc_proargdefaults, &isnull);
	if (!isnull && nargs == ((Form_pg_proc) GETSTRUCT(proc))->pronargs)
		defaults = castNode(List, stringToNode(TextDatumGetCString(d)));
	ReleaseSysCache(proc);

	first_default = nargs - list_length(defaults);
	keep = nargs;
	while (keep > first_default)
	{
		Node	   *arg = list_nth(call->args, keep - 1);
		Node	   *dflt = list_nth(defaults, keep - 1 - first_default);

		if (!IsA(arg, Const) || !IsA(dflt, Const) || !equal(arg, dflt))
			break;
		keep--;
	}
	if (keep == nargs)
		PG_RETURN_POINTER(NULL);

	shorter = makeFuncExpr(call->funcid, call->funcresulttype,
						   list_copy_head(call->args, keep),
						   call->funccollid, call->inputcollid,
						   call->funcformat);
	shorter->funcretset = call->funcretset;
	shorter->location = call->location;
	PG_RETURN_POINTER(shorter);
}
