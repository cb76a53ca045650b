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
 * shard function, in the one form that Citus delegates in every context:
 * SELECT * FROM f($1, ...), which Citus plans with the parameters' values
 * as constants.  An error on the worker comes back with its SQLSTATE,
 * message, detail and hint.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "idempotency.h"

/* The shard functions, called with parameters through kept plans */
typedef enum RoutedCall
{
	R_RESERVE,
	R_COMMIT,
	R_RELEASE,
	R_GET,
	R_EXTEND,
	NUM_ROUTED
} RoutedCall;

static const struct
{
	const char *function;
	int			nargs;
	Oid			argtypes[7];
}			routed[NUM_ROUTED] = {
	[R_RESERVE] = {"idem_shard_reserve", 7,
	{TEXTOID, TEXTOID, INTERVALOID, INTERVALOID, TEXTOID, TEXTOID, INTERVALOID}},
	[R_COMMIT] = {"idem_shard_commit", 7,
	{TEXTOID, TEXTOID, INT4OID, BYTEAOID, JSONBOID, TEXTOID, TEXTOID}},
	[R_RELEASE] = {"idem_shard_release", 3, {TEXTOID, TEXTOID, TEXTOID}},
	[R_GET] = {"idem_shard_get", 2, {TEXTOID, TEXTOID}},
	[R_EXTEND] = {"idem_shard_extend", 4,
	{TEXTOID, TEXTOID, INTERVALOID, TEXTOID}},
};

static SPIPlanPtr plans[NUM_ROUTED];
static char *plans_schema = NULL;	/* the schema the plans name */

/*
 * The kept plan of a shard function.  Citus plans each execution anew with
 * the parameters' values as constants (it refuses generic plans for
 * distributed function calls) and delegates it; what the plan keeps is the
 * parse and analysis.
 */
static SPIPlanPtr
routed_plan(RoutedCall r)
{
	const char *schema = idem_storage_schema();

	if (plans_schema != NULL && strcmp(plans_schema, schema) != 0)
	{
		for (int i = 0; i < NUM_ROUTED; i++)
		{
			if (plans[i] != NULL)
				SPI_freeplan(plans[i]);
			plans[i] = NULL;
		}
		pfree(plans_schema);
		plans_schema = NULL;
	}
	if (plans_schema == NULL)
		plans_schema = MemoryContextStrdup(TopMemoryContext, schema);

	if (plans[r] == NULL)
	{
		StringInfoData sql;
		SPIPlanPtr	plan;

		initStringInfo(&sql);
		appendStringInfo(&sql, "SELECT * FROM %s.%s(", schema,
						 routed[r].function);
		for (int i = 1; i <= routed[r].nargs; i++)
			appendStringInfo(&sql, "%s$%d", i > 1 ? ", " : "", i);
		appendStringInfoChar(&sql, ')');
		plan = SPI_prepare(sql.data, routed[r].nargs,
						   (Oid *) routed[r].argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s",
				 sql.data, SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		plans[r] = plan;
		pfree(sql.data);
	}
	return plans[r];
}

static Datum
key_datum(const IdemKey *k)
{
	return PointerGetDatum(cstring_to_text_with_len(k->key, k->key_len));
}

static Datum
text_or_null(const char *s, char *null)
{
	*null = s ? ' ' : 'n';
	return s ? CStringGetTextDatum(s) : (Datum) 0;
}

/*
 * Runs the call; returns its one row, NULL when the function returned NULL
 * (column 1 of a scalar function, or a row whose state is NULL).  The row is
 * copied out of SPI: for a row type into the caller's function context as
 * a composite Datum, else the value itself (by value types only).
 */
static Datum
run_call(RoutedCall r, Datum *values, const char *nulls, TupleDesc rowdesc,
		 bool *isnull)
{
	Datum		result = (Datum) 0;
	int			rc;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute_plan(routed_plan(r), values, nulls, false, 0);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "routed call of %s returned %s with " UINT64_FORMAT " rows",
			 routed[r].function, SPI_result_code_string(rc), SPI_processed);

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
	return result;
}

Datum
idem_route_reserve(FunctionCallInfo fcinfo, const IdemKey *k, const char *hash,
				   const Interval *ttl, int64 wait_us, const IdemOwner *owner)
{
	Datum		values[7];
	char		nulls[7] = "       ";
	Interval	wait;
	Datum		result;
	bool		isnull;

	memset(&wait, 0, sizeof(wait));
	wait.time = wait_us;
	values[0] = key_datum(k);
	values[1] = text_or_null(hash, &nulls[1]);
	values[2] = IntervalPGetDatum(ttl);
	values[3] = IntervalPGetDatum(&wait);
	values[4] = CStringGetTextDatum(k->scope);
	values[5] = text_or_null(owner->token, &nulls[5]);
	values[6] = IntervalPGetDatum(&owner->lease_len);
	if (!owner->lease)
		nulls[6] = 'n';
	result = run_call(R_RESERVE, values, nulls,
					  idem_reservation_tupdesc(fcinfo), &isnull);
	if (isnull)
		elog(ERROR, "routed idem_reserve returned no record");
	return result;
}

Datum
idem_route_commit(FunctionCallInfo fcinfo, const IdemKey *k, const char *hash,
				  bool status_null, int32 status, bytea *body, Jsonb *headers,
				  const char *token)
{
	Datum		values[7];
	char		nulls[7] = "       ";
	Datum		result;
	bool		isnull;

	values[0] = key_datum(k);
	values[1] = text_or_null(hash, &nulls[1]);
	values[2] = Int32GetDatum(status);
	nulls[2] = status_null ? 'n' : ' ';
	values[3] = PointerGetDatum(body);
	nulls[3] = body ? ' ' : 'n';
	values[4] = JsonbPGetDatum(headers);
	nulls[4] = headers ? ' ' : 'n';
	values[5] = CStringGetTextDatum(k->scope);
	values[6] = text_or_null(token, &nulls[6]);
	result = run_call(R_COMMIT, values, nulls, NULL, &isnull);
	return isnull ? BoolGetDatum(false) : result;
}

Datum
idem_route_release(FunctionCallInfo fcinfo, const IdemKey *k,
				   const char *token)
{
	Datum		values[3];
	char		nulls[3] = "   ";
	Datum		result;
	bool		isnull;

	values[0] = key_datum(k);
	values[1] = CStringGetTextDatum(k->scope);
	values[2] = text_or_null(token, &nulls[2]);
	result = run_call(R_RELEASE, values, nulls, NULL, &isnull);
	return isnull ? BoolGetDatum(false) : result;
}

/* Sets *isnull when the key is absent */
Datum
idem_route_get(FunctionCallInfo fcinfo, const IdemKey *k, bool *isnull)
{
	Datum		values[2];

	values[0] = key_datum(k);
	values[1] = CStringGetTextDatum(k->scope);
	return run_call(R_GET, values, NULL, idem_reservation_tupdesc(fcinfo),
					isnull);
}

Datum
idem_route_extend(FunctionCallInfo fcinfo, const IdemKey *k, const char *token,
				  const Interval *lease)
{
	Datum		values[4];
	char		nulls[4] = "    ";
	Datum		result;
	bool		isnull;

	values[0] = key_datum(k);
	values[1] = text_or_null(token, &nulls[1]);
	values[2] = lease ? IntervalPGetDatum(lease) : (Datum) 0;
	nulls[2] = lease ? ' ' : 'n';
	values[3] = CStringGetTextDatum(k->scope);
	result = run_call(R_EXTEND, values, nulls, NULL, &isnull);
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
