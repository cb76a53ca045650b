/*-------------------------------------------------------------------------
 *
 * idem_route.c
 *	  Calls routed to the node of a key's shard, when Citus distributes the
 *	  key table.
 *
 * idem_distribute() distributes idem_keys by key, and the idem_shard_*
 * functions by their first argument, co-located with it, with
 * force_delegation: Citus runs a call of one of them on the node that
 * holds the shard of that key, inside the caller's transaction when one is
 * open, and the storage code there finds the shard by the key.
 *
 * The public functions are not distributed themselves: they check their
 * arguments first (Citus 13.2.2 crashes the coordinator when a function
 * distributed by $1 is called with a NULL first argument), resolve every
 * default from this session's settings (they do not travel to the worker
 * with the call), and, when the key's shard is on another node, call the
 * shard function with constants, in the one form that Citus delegates in
 * every context: SELECT * FROM f(constant, ...).  An error on the worker
 * comes back with its SQLSTATE, message, detail and hint.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "idempotency.h"

/* SQL literals of the arguments */
static void
add_text(StringInfo sql, const char *s)
{
	if (sql->data[sql->len - 1] != '(')
		appendStringInfoString(sql, ", ");
	if (s == NULL)
		appendStringInfoString(sql, "NULL");
	else
		appendStringInfoString(sql, quote_literal_cstr(s));
}

static void
add_key(StringInfo sql, const IdemKey *k)
{
	add_text(sql, pnstrdup(k->key, k->key_len));
}

static void
add_typed(StringInfo sql, const char *out, const char *type)
{
	add_text(sql, out);
	if (out != NULL)
		appendStringInfo(sql, "::pg_catalog.%s", type);
}

static void
add_interval(StringInfo sql, const Interval *iv)
{
	add_typed(sql, iv ? idem_interval_text(iv) : NULL, "interval");
}

static void
begin_call(StringInfo sql, const char *function)
{
	initStringInfo(sql);
	appendStringInfo(sql, "SELECT * FROM %s.%s(", idem_storage_schema(),
					 function);
}

/*
 * Runs the call; returns its one row, NULL when the function returned NULL
 * (column 1 of a scalar function, or a row whose state is NULL).  The row is
 * copied out of SPI: for a row type into the caller's function context as
 * a composite Datum, else the value itself (by value types only).
 */
static Datum
run_call(FunctionCallInfo fcinfo, StringInfo sql, TupleDesc rowdesc,
		 bool *isnull)
{
	Datum		result = (Datum) 0;
	int			rc;

	appendStringInfoChar(sql, ')');
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute(sql->data, false, 0);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "routed call returned %s with " UINT64_FORMAT " rows: %s",
			 SPI_result_code_string(rc), SPI_processed, sql->data);

	if (rowdesc != NULL)
	{
		/* column 2 is state, never NULL in a record */
		(void) SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
							 isnull);
		if (!*isnull)
			result = PointerGetDatum(SPI_returntuple(SPI_tuptable->vals[0],
													 rowdesc));
	}
	else
		result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
							   1, isnull);

	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");
	pfree(sql->data);
	return result;
}

Datum
idem_route_reserve(FunctionCallInfo fcinfo, const IdemKey *k, const char *hash,
				   const Interval *ttl, int64 wait_us, const IdemOwner *owner)
{
	StringInfoData sql;
	Interval	wait;
	Datum		result;
	bool		isnull;

	memset(&wait, 0, sizeof(wait));
	wait.time = wait_us;

	begin_call(&sql, "idem_shard_reserve");
	add_key(&sql, k);
	add_text(&sql, hash);
	add_interval(&sql, ttl);
	add_interval(&sql, &wait);
	add_text(&sql, k->scope);
	add_text(&sql, owner->token);
	add_interval(&sql, owner->lease ? &owner->lease_len : NULL);
	result = run_call(fcinfo, &sql, idem_reservation_tupdesc(fcinfo), &isnull);
	if (isnull)
		elog(ERROR, "routed idem_reserve returned no record");
	return result;
}

Datum
idem_route_commit(FunctionCallInfo fcinfo, const IdemKey *k, const char *hash,
				  bool status_null, int32 status, bytea *body, Jsonb *headers,
				  const char *token)
{
	StringInfoData sql;
	Datum		result;
	bool		isnull;

	begin_call(&sql, "idem_shard_commit");
	add_key(&sql, k);
	add_text(&sql, hash);
	add_typed(&sql, status_null ? NULL : psprintf("%d", status), "int4");
	add_typed(&sql, body ? DatumGetCString(DirectFunctionCall1(byteaout,
															   PointerGetDatum(body))) : NULL,
			  "bytea");
	add_typed(&sql, headers ? JsonbToCString(NULL, &headers->root,
											 VARSIZE(headers)) : NULL,
			  "jsonb");
	add_text(&sql, k->scope);
	add_text(&sql, token);
	result = run_call(fcinfo, &sql, NULL, &isnull);
	return isnull ? BoolGetDatum(false) : result;
}

Datum
idem_route_release(FunctionCallInfo fcinfo, const IdemKey *k,
				   const char *token)
{
	StringInfoData sql;
	Datum		result;
	bool		isnull;

	begin_call(&sql, "idem_shard_release");
	add_key(&sql, k);
	add_text(&sql, k->scope);
	add_text(&sql, token);
	result = run_call(fcinfo, &sql, NULL, &isnull);
	return isnull ? BoolGetDatum(false) : result;
}

/* Sets *isnull when the key is absent */
Datum
idem_route_get(FunctionCallInfo fcinfo, const IdemKey *k, bool *isnull)
{
	StringInfoData sql;

	begin_call(&sql, "idem_shard_get");
	add_key(&sql, k);
	add_text(&sql, k->scope);
	return run_call(fcinfo, &sql, idem_reservation_tupdesc(fcinfo), isnull);
}

Datum
idem_route_extend(FunctionCallInfo fcinfo, const IdemKey *k, const char *token,
				  const Interval *lease)
{
	StringInfoData sql;
	Datum		result;
	bool		isnull;

	begin_call(&sql, "idem_shard_extend");
	add_key(&sql, k);
	add_text(&sql, token);
	add_interval(&sql, lease);
	add_text(&sql, k->scope);
	result = run_call(fcinfo, &sql, NULL, &isnull);
	if (isnull)
		elog(ERROR, "routed idem_extend returned NULL");
	return result;
}

/*
 * idem_purge on the coordinator: every worker purges the shards placed on
 * it (each in a transaction of its own, as Citus runs such commands).
 * Returns how many records they deleted.
 */
int64
idem_route_purge_workers(int64 limit)
{
	StringInfoData cmd;
	StringInfoData sql;
	int64		n = 0;
	int			rc;

	initStringInfo(&cmd);
	appendStringInfo(&cmd, "SELECT %s.idem_purge(%s)", idem_storage_schema(),
					 limit < 0 ? "NULL" : psprintf(INT64_FORMAT, limit));
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT nodename, nodeport, success, result"
					 " FROM pg_catalog.run_command_on_workers(%s)",
					 quote_literal_cstr(cmd.data));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute(sql.data, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not run idem_purge on the workers: %s",
			 SPI_result_code_string(rc));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *result = SPI_getvalue(tup, desc, 4);

		if (!DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull)))
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("idem_purge failed on worker %s:%s",
							SPI_getvalue(tup, desc, 1),
							SPI_getvalue(tup, desc, 2)),
					 errdetail("%s", result ? result : "")));
		if (result != NULL)
			n += pg_strtoint64(result);
	}
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");
	return n;
}
