/*-------------------------------------------------------------------------
 *
 * idem_storage.c
 *	  Access to the key table: reads probe the primary key directly,
 *	  writes go through SPI with plans kept per backend.
 *
 * Every query is prepared once per backend (and again only after the table
 * or the extension is dropped and created anew), fully schema-qualified,
 * operators included, so that nothing on the caller's search_path can
 * intervene.  Queries run as the table's owner: PUBLIC has no privilege on
 * the table, the functions are the way in.
 *
 * Reads use the latest snapshot, not the transaction's: a waiter that was
 * just granted a key's lock must see what the previous holder committed,
 * whatever its isolation level.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/nbtree.h"
#include "access/relscan.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "idempotency.h"

typedef enum StorageQuery
{
	Q_READ,
	Q_INSERT,
	Q_RENEW,
	Q_COMMIT,
	Q_EXTEND,
	Q_DELETE,
	Q_ABANDON,
	Q_EVICT,
	Q_PURGE_SCAN,
	Q_PURGE_DELETE,
	Q_CONFINED,
	NUM_QUERIES
} StorageQuery;

/*
 * A query of this file.  Before version 1.2 the key table has no lease
 * columns; the parts of a query that name them are lease_part, given in
 * place of legacy_part when the table has them.
 */
typedef struct QueryDef
{
	const char *sql;			/* {schema} = the extension's schema, quoted;
								 * {lease} = lease_part or legacy_part;
								 * {table} = the table (or shard), qualified */
	const char *lease_part;
	const char *legacy_part;
	int			nargs;
	Oid			argtypes[12];
} QueryDef;

#define EQ " OPERATOR(pg_catalog.=) "

static const QueryDef query_defs[NUM_QUERIES] = {
	/* reads and inserts when the table cannot be accessed directly */
	[Q_READ] = {
		"SELECT * FROM {table} WHERE scope" EQ "$1 AND key" EQ "$2",
		"", "",
		2, {TEXTOID, TEXTOID}
	},
	[Q_INSERT] = {
		"INSERT INTO {table} (scope, key, state, request_hash, attempt,"
		" ttl, created_at, expires_at, owner_pid, owner_started{lease}"
		" ON CONFLICT DO NOTHING",
		", owner_token, lease, lease_expires_at)"
		" VALUES ($1, $2, 'in_flight', $3, 1, $4, $5, $6, $7, $8, $9, $10, $11)",
		") VALUES ($1, $2, 'in_flight', $3, 1, $4, $5, $6, $7, $8)",
		11, {TEXTOID, TEXTOID, TEXTOID, INTERVALOID, TIMESTAMPTZOID,
			TIMESTAMPTZOID, INT4OID, TIMESTAMPTZOID, TEXTOID, INTERVALOID,
		TIMESTAMPTZOID}
	},
	[Q_RENEW] = {
		"UPDATE {table} SET state = 'in_flight', request_hash = $3, status = NULL,"
		" headers = NULL, body = NULL, attempt = $4, ttl = $5,"
		" created_at = $6, expires_at = $7, committed_at = NULL,"
		" owner_pid = $8, owner_started = $9{lease}"
		" WHERE scope" EQ "$1 AND key" EQ "$2",
		", owner_token = $10, lease = $11, lease_expires_at = $12,"
		/*
		 * a takeover fences the lease owner it replaces (the last
		 * FENCED_KEPT of them are kept), a new start forgets them all, and
		 * the new owner is not fenced
		 */
		" fenced_tokens = pg_catalog.array_remove(CASE"
		" WHEN $4 OPERATOR(pg_catalog.=) 1 THEN NULL"
		" WHEN lease_expires_at IS NOT NULL AND owner_token IS NOT NULL THEN"
		" (pg_catalog.array_append(fenced_tokens, owner_token))"
		"[GREATEST(1, COALESCE(pg_catalog.cardinality(fenced_tokens), 0) - 6):]"
		" ELSE fenced_tokens END, $10)", "",
		12, {TEXTOID, TEXTOID, TEXTOID, INT4OID, INTERVALOID, TIMESTAMPTZOID,
			TIMESTAMPTZOID, INT4OID, TIMESTAMPTZOID, TEXTOID, INTERVALOID,
		TIMESTAMPTZOID}
	},
	[Q_COMMIT] = {
		"UPDATE {table} SET state = 'committed',"
		" request_hash = COALESCE(request_hash, $3),"
		" status = $4, headers = $5, body = $6, committed_at = $7,"
		" expires_at = $8, owner_pid = NULL, owner_started = NULL{lease}"
		" WHERE scope" EQ "$1 AND key" EQ "$2 AND state" EQ "'in_flight'",
		", owner_token = COALESCE($9, owner_token), lease = NULL,"
		" lease_expires_at = NULL", "",
		9, {TEXTOID, TEXTOID, TEXTOID, INT4OID, JSONBOID, BYTEAOID,
		TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID}
	},
	[Q_EXTEND] = {
		"UPDATE {table} SET lease = $4, lease_expires_at = $5"
		" WHERE scope" EQ "$1 AND key" EQ "$2 AND state" EQ "'in_flight'"
		" AND owner_token" EQ "$3 AND lease_expires_at IS NOT NULL",
		"", "",
		5, {TEXTOID, TEXTOID, TEXTOID, INTERVALOID, TIMESTAMPTZOID}
	},
	[Q_DELETE] = {
		"DELETE FROM {table}"
		" WHERE scope" EQ "$1 AND key" EQ "$2 AND state" EQ "'in_flight'",
		"", "",
		2, {TEXTOID, TEXTOID}
	},
	[Q_ABANDON] = {
		"UPDATE {table} SET owner_pid = NULL, owner_started = NULL"
		" WHERE scope" EQ "$1 AND key" EQ "$2 AND state" EQ "'in_flight'"
		" AND owner_pid" EQ "$3 AND owner_started" EQ "$4",
		"", "",
		4, {TEXTOID, TEXTOID, INT4OID, TIMESTAMPTZOID}
	},
	[Q_EVICT] = {
		"DELETE FROM {table}"
		" WHERE scope" EQ "$1 AND key" EQ "$2 AND state" EQ "'committed'",
		"", "",
		2, {TEXTOID, TEXTOID}
	},
	[Q_PURGE_SCAN] = {
		"SELECT ctid, state" EQ "'committed', owner_pid, owner_started, {lease}"
		" FROM {table} WHERE expires_at OPERATOR(pg_catalog.<=) $1"
		" AND ($2 IS NULL OR scope" EQ "ANY ($2))"
		" AND ctid OPERATOR(pg_catalog.>=) $3 AND ctid OPERATOR(pg_catalog.<) $4",
		"lease_expires_at", "NULL::pg_catalog.timestamptz",
		4, {TIMESTAMPTZOID, TEXTARRAYOID, TIDOID, TIDOID}
	},
	[Q_PURGE_DELETE] = {
		"DELETE FROM {table} WHERE ctid" EQ "ANY ($1)"
		" AND expires_at OPERATOR(pg_catalog.<=) $2",
		"", "",
		2, {TIDARRAYOID, TIMESTAMPTZOID}
	},
	[Q_CONFINED] = {
		"SELECT scope FROM {schema}.idem_confinement"
		" WHERE role" EQ "$1",
		"", "",
		1, {REGROLEOID}
	},
};

/*
 * Columns of the key table, as the install script creates them; checked
 * against the catalog when the table is looked up.
 */
enum
{
	Anum_scope = 1,
	Anum_key,
	Anum_state,
	Anum_request_hash,
	Anum_status,
	Anum_headers,
	Anum_body,
	Anum_attempt,
	Anum_ttl,
	Anum_created_at,
	Anum_expires_at,
	Anum_committed_at,
	Anum_owner_pid,
	Anum_owner_started,
	Anum_owner_token,			/* from version 1.2 on */
	Anum_lease,
	Anum_lease_expires_at,
	Anum_fenced_tokens			/* lease owners that takeovers replaced */
};

/* columns before version 1.2, which added the lease columns */
#define NUM_LEGACY_COLUMNS	Anum_owner_started

static const struct
{
	const char *name;
	Oid			type;
}			key_columns[] = {
	{"scope", TEXTOID},
	{"key", TEXTOID},
	{"state", TEXTOID},
	{"request_hash", TEXTOID},
	{"status", INT4OID},
	{"headers", JSONBOID},
	{"body", BYTEAOID},
	{"attempt", INT4OID},
	{"ttl", INTERVALOID},
	{"created_at", TIMESTAMPTZOID},
	{"expires_at", TIMESTAMPTZOID},
	{"committed_at", TIMESTAMPTZOID},
	{"owner_pid", INT4OID},
	{"owner_started", TIMESTAMPTZOID},
	{"owner_token", TEXTOID},
	{"lease", INTERVALOID},
	{"lease_expires_at", TIMESTAMPTZOID},
	{"fenced_tokens", TEXTARRAYOID},
};

/*
 * A table that holds records: the key table, or, when Citus distributes
 * it, one of its shards placed on this node.
 */
struct KeyTable
{
	int64		shardid;		/* hash key; 0 for the key table itself */
	Oid			relid;			/* InvalidOid: the shard is elsewhere */
	Oid			pkey_relid;
	bool		direct_reads;	/* a heap table: probe its primary key */
	bool		direct_writes;	/* ... with nothing the direct writes would
								 * skip: see check_key_table */
	char	   *name;			/* schema-qualified, quoted */
	SPIPlanPtr	plans[NUM_QUERIES];
};
typedef struct KeyTable KeyTable;

/* The hash range of one shard of a distributed key table */
typedef struct ShardRange
{
	int32		min;
	int32		max;
	int64		shardid;
} ShardRange;

/*
 * Per-backend cache: where the tables are, who owns them, the kept plans;
 * rebuilt after a relcache invalidation of any of them.
 */
static struct
{
	bool		valid;
	Oid			relid;			/* idem_keys (with Citus, the distributed
								 * table, whose rows are in its shards) */
	Oid			owner;
	Oid			nspid;
	Oid			confinement_relid;	/* InvalidOid before version 1.1 */
	bool		has_leases;		/* lease columns (version 1.2 on) */
	char	   *schema;			/* quoted */
	KeyTable	main;			/* idem_keys itself */
	/* when Citus distributes idem_keys */
	bool		distributed;
	bool		coordinator;	/* this node is Citus's coordinator */
	Oid			key_collation;
	int			nshards;
	ShardRange *shards;			/* sorted by min */
	HTAB	   *shard_tables;	/* shardid -> KeyTable */
} cache;

static bool callback_registered = false;

static void refresh_cache(void);
static KeyTable *shard_table(int i);

static void
invalidate_cache(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	KeyTable   *t;

	if (!cache.valid)
		return;
	if (relid == InvalidOid || relid == cache.relid ||
		relid == cache.main.pkey_relid)
	{
		cache.valid = false;
		return;
	}
	if (cache.shard_tables == NULL)
		return;
	hash_seq_init(&status, cache.shard_tables);
	while ((t = (KeyTable *) hash_seq_search(&status)) != NULL)
	{
		if (relid == t->relid || relid == t->pkey_relid)
		{
			cache.valid = false;
			hash_seq_term(&status);
			return;
		}
	}
}

/*
 * The schema of an extension (PostgreSQL 15 does not export
 * get_extension_schema).
 */
static Oid
extension_schema(Oid extoid)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tuple;
	Oid			nspid = InvalidOid;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(extoid));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
		nspid = ((Form_pg_extension) GETSTRUCT(tuple))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return nspid;
}

/*
 * A key table (or shard) must have the columns this file reads by number,
 * and its primary key on (scope, key).  Fills t's pkey_relid and access
 * flags; returns how many of the columns it has (a table of a version
 * before 1.2 lacks the lease columns: the module is updated before ALTER
 * EXTENSION UPDATE runs).
 */
static int
check_key_table(Oid relid, KeyTable *t)
{
	Relation	rel = table_open(relid, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);
	Oid			pkey = RelationGetPrimaryKeyIndex(rel);
	int			ncols = lengthof(key_columns);
	List	   *indexes;

	if (desc->natts < ncols)
		ncols = NUM_LEGACY_COLUMNS;
	for (int i = 0; i < ncols; i++)
	{
		Form_pg_attribute att;

		if (i >= desc->natts)
			elog(ERROR, "key table has %d columns, expected at least %d",
				 desc->natts, ncols);
		att = TupleDescAttr(desc, i);
		if (att->attisdropped || att->atttypid != key_columns[i].type ||
			strcmp(NameStr(att->attname), key_columns[i].name) != 0)
			elog(ERROR, "column %d of the key table is not \"%s\"",
				 i + 1, key_columns[i].name);
	}
	if (!OidIsValid(pkey))
		elog(ERROR, "key table has no primary key");

	/*
	 * Reads probe the primary key of a heap table.  Writes go to the heap
	 * and the primary key directly only when that is all there is to do:
	 * no other index to maintain, no trigger or rule to fire, no check
	 * constraint, no column of someone else's, no forced row security.
	 * When a DBA adds any of these, the writes go through the executor
	 * (SPI), which does all of it, at the cost of some speed.  Checked
	 * again on every relcache invalidation of the table, which such a
	 * change sends.
	 */
	t->relid = relid;
	t->direct_reads = rel->rd_rel->relkind == RELKIND_RELATION &&
		rel->rd_rel->relam == HEAP_TABLE_AM_OID;
	indexes = RelationGetIndexList(rel);
	t->direct_writes = t->direct_reads &&
		list_length(indexes) == 1 &&
		desc->natts == ncols &&
		rel->trigdesc == NULL && rel->rd_rules == NULL &&
		(desc->constr == NULL ||
		 (desc->constr->num_check == 0 &&
		  !desc->constr->has_generated_stored)) &&
		!rel->rd_rel->relforcerowsecurity;
	list_free(indexes);
	table_close(rel, AccessShareLock);
	t->pkey_relid = pkey;
	return ncols;
}

/*
 * Does the key table have the lease columns (version 1.2 on)?
 */
bool
idem_storage_has_leases(void)
{
	if (!cache.valid)
		refresh_cache();
	return cache.has_leases;
}

static void
forget_table(KeyTable *t)
{
	for (int i = 0; i < NUM_QUERIES; i++)
	{
		if (t->plans[i] != NULL)
			SPI_freeplan(t->plans[i]);
		t->plans[i] = NULL;
	}
	if (t->name != NULL)
		pfree(t->name);
	t->name = NULL;
}

/*
 * When Citus distributes the key table: its shards' hash ranges (metadata
 * that Citus keeps on every node), and whether this node is the
 * coordinator.
 */
static void
load_citus_metadata(void)
{
	Datum		arg = ObjectIdGetDatum(cache.relid);
	Oid			argtype = OIDOID;
	int			rc;

	cache.distributed = false;
	if (!OidIsValid(get_extension_oid("citus", true)))
		return;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute_with_args("SELECT shardid, shardminvalue::pg_catalog.int4,"
							   " shardmaxvalue::pg_catalog.int4"
							   " FROM pg_catalog.pg_dist_shard"
							   " WHERE logicalrelid OPERATOR(pg_catalog.=) $1"
							   " AND EXISTS (SELECT FROM pg_catalog.pg_dist_partition"
							   " WHERE logicalrelid OPERATOR(pg_catalog.=) $1"
							   " AND partmethod OPERATOR(pg_catalog.=) 'h')"
							   " ORDER BY 2",
							   1, &argtype, &arg, NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read the shards of the key table: %s",
			 SPI_result_code_string(rc));
	if (SPI_processed > 0)
	{
		cache.nshards = (int) SPI_processed;
		cache.shards = MemoryContextAlloc(TopMemoryContext,
										  sizeof(ShardRange) * cache.nshards);
		for (int i = 0; i < cache.nshards; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;

			cache.shards[i].shardid =
				DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			cache.shards[i].min =
				DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
			cache.shards[i].max =
				DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
		}
		cache.distributed = true;
		rc = SPI_execute("SELECT pg_catalog.citus_is_coordinator()", true, 1);
		{
			bool		isnull;

			cache.coordinator = (rc == SPI_OK_SELECT && SPI_processed == 1 &&
								 DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
															SPI_tuptable->tupdesc,
															1, &isnull)));
		}
	}
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");

	if (cache.distributed)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(int64);
		ctl.entrysize = sizeof(KeyTable);
		ctl.hcxt = TopMemoryContext;
		cache.shard_tables = hash_create("idempotency key table shards", 64,
										 &ctl,
										 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
}

/*
 * Looks up the tables (once per backend, and again after they change) and
 * forgets old plans.
 */
static void
refresh_cache(void)
{
	Oid			extoid;
	Oid			nspid;
	Oid			relid;
	HeapTuple	tuple;
	MemoryContext oldcxt;
	int			ncols;

	forget_table(&cache.main);
	if (cache.shard_tables != NULL)
	{
		HASH_SEQ_STATUS status;
		KeyTable   *t;

		hash_seq_init(&status, cache.shard_tables);
		while ((t = (KeyTable *) hash_seq_search(&status)) != NULL)
			forget_table(t);
		hash_destroy(cache.shard_tables);
		cache.shard_tables = NULL;
	}
	if (cache.shards != NULL)
		pfree(cache.shards);
	cache.shards = NULL;
	cache.nshards = 0;
	cache.distributed = false;
	if (cache.schema != NULL)
		pfree(cache.schema);
	cache.schema = NULL;

	extoid = get_extension_oid("idempotency", true);
	if (!OidIsValid(extoid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"idempotency\" is not installed in this database"),
				 errhint("Run CREATE EXTENSION idempotency.")));
	nspid = extension_schema(extoid);
	relid = get_relname_relid("idem_keys", nspid);
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("key table \"%s.idem_keys\" of extension \"idempotency\" does not exist",
						get_namespace_name(nspid))));

	ncols = check_key_table(relid, &cache.main);
	cache.has_leases = (ncols == lengthof(key_columns));

	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	cache.owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);

	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	cache.schema = pstrdup(quote_identifier(get_namespace_name(nspid)));
	cache.main.name = psprintf("%s.idem_keys", cache.schema);
	MemoryContextSwitchTo(oldcxt);
	cache.relid = relid;
	cache.nspid = nspid;
	{
		Oid			typid;
		int32		typmod;

		get_atttypetypmodcoll(relid, Anum_key, &typid, &typmod,
							  &cache.key_collation);
	}
	cache.confinement_relid = get_relname_relid("idem_confinement", nspid);

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(invalidate_cache, (Datum) 0);
		callback_registered = true;
	}
	load_citus_metadata();
	cache.valid = true;
}

/*
 * The table that holds k's record: the key table, or the shard of k when
 * Citus distributes it (found as Citus routes: the hash of the key, in
 * the column's collation, within a shard's range).  NULL when that shard
 * is placed on another node.  *shardid (if not NULL) is set to the shard,
 * 0 without Citus.
 */
static KeyTable *
table_of(const IdemKey *k, int64 *shardid)
{
	int32		h;
	int			lo;
	int			hi;

	if (!cache.valid)
		refresh_cache();
	if (shardid)
		*shardid = 0;
	if (!cache.distributed)
		return &cache.main;

	h = DatumGetInt32(DirectFunctionCall1Coll(hashtext, cache.key_collation,
											  PointerGetDatum(cstring_to_text_with_len(k->key, k->key_len))));
	lo = 0;
	hi = cache.nshards - 1;
	while (lo < hi)
	{
		int			mid = (lo + hi + 1) / 2;

		if (cache.shards[mid].min <= h)
			lo = mid;
		else
			hi = mid - 1;
	}
	if (cache.nshards == 0 || h < cache.shards[lo].min || h > cache.shards[lo].max)
		elog(ERROR, "no shard of the key table covers hash %d", h);
	if (shardid)
		*shardid = cache.shards[lo].shardid;
	return shard_table(lo);
}

/*
 * The KeyTable of the i-th shard, NULL when it is placed on another node.
 */
static KeyTable *
shard_table(int i)
{
	KeyTable   *t;
	bool		found;

	t = (KeyTable *) hash_search(cache.shard_tables, &cache.shards[i].shardid,
								 HASH_ENTER, &found);
	if (!found)
	{
		memset((char *) t + sizeof(int64), 0, sizeof(KeyTable) - sizeof(int64));
		t->relid = InvalidOid;
	}
	if (!OidIsValid(t->relid))
	{
		char		relname[NAMEDATALEN];
		Oid			relid;
		MemoryContext oldcxt;

		/* Citus names a shard after its table and its id */
		snprintf(relname, sizeof(relname), "idem_keys_" INT64_FORMAT, t->shardid);
		relid = get_relname_relid(relname, cache.nspid);
		if (!OidIsValid(relid))
			return NULL;
		(void) check_key_table(relid, t);
		oldcxt = MemoryContextSwitchTo(TopMemoryContext);
		t->name = psprintf("%s.%s", cache.schema, quote_identifier(relname));
		MemoryContextSwitchTo(oldcxt);
	}
	return t;
}

/*
 * table_of for a call that must find the record here.
 */
static KeyTable *
local_table(const IdemKey *k)
{
	int64		shardid;
	KeyTable   *t = table_of(k, &shardid);

	if (t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the shard of idempotency key \"%s\" in scope \"%s\" is not on this node",
						k->key, k->scope),
				 errdetail("The key table is distributed by Citus; shard " INT64_FORMAT " of it is placed on another node.",
						   shardid),
				 errhint("Call the function on the coordinator, which routes it to the node of the shard.")));
	return t;
}

/*
 * Is the key table distributed by Citus, and does the record of k live on
 * another node?  Then the call must be routed there.
 */
bool
idem_storage_is_remote(const IdemKey *k)
{
	if (!cache.valid)
		refresh_cache();
	return cache.distributed && table_of(k, NULL) == NULL;
}

bool
idem_storage_distributed(void)
{
	if (!cache.valid)
		refresh_cache();
	return cache.distributed;
}

bool
idem_storage_coordinator(void)
{
	if (!cache.valid)
		refresh_cache();
	return cache.distributed && cache.coordinator;
}

/* The extension's schema, quoted */
const char *
idem_storage_schema(void)
{
	if (!cache.valid)
		refresh_cache();
	return cache.schema;
}

/*
 * A query of query_defs with its placeholders filled in.
 */
static char *
query_text(const char *sql, const char *lease_part, const char *table)
{
	StringInfoData buf;

	initStringInfo(&buf);
	while (*sql)
	{
		if (strncmp(sql, "{schema}", 8) == 0)
		{
			appendStringInfoString(&buf, cache.schema);
			sql += 8;
		}
		else if (strncmp(sql, "{lease}", 7) == 0)
		{
			appendStringInfoString(&buf, lease_part);
			sql += 7;
		}
		else if (strncmp(sql, "{table}", 7) == 0)
		{
			appendStringInfoString(&buf, table);
			sql += 7;
		}
		else
			appendStringInfoChar(&buf, *sql++);
	}
	return buf.data;
}

static SPIPlanPtr
get_plan(KeyTable *t, StorageQuery q)
{
	if (t->plans[q] == NULL)
	{
		const QueryDef *def = &query_defs[q];
		char	   *sql = query_text(def->sql,
									 cache.has_leases ? def->lease_part :
									 def->legacy_part, t->name);
		SPIPlanPtr	plan;

		plan = SPI_prepare(sql, def->nargs, (Oid *) def->argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s",
				 sql, SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		t->plans[q] = plan;
		pfree(sql);
	}
	return t->plans[q];
}

/*
 * Brackets for every storage call: SPI connected, running as the owner of
 * the table.  An error in between is cleaned up by the transaction's abort.
 */
void
idem_storage_begin(IdemStorageCall *call)
{
	Assert(cache.valid || cache.schema != NULL);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	GetUserIdAndSecContext(&call->save_userid, &call->save_sec_context);
	SetUserIdAndSecContext(cache.owner,
						   call->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
}

void
idem_storage_end(IdemStorageCall *call)
{
	SetUserIdAndSecContext(call->save_userid, call->save_sec_context);
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");
}

/*
 * Runs a kept plan.  Reads see the latest committed state.  Writes in READ
 * COMMITTED see it too (the executor takes a new snapshot per query); under
 * REPEATABLE READ and SERIALIZABLE they run on the latest snapshot and are
 * cross-checked against the transaction's, as foreign-key checks are, so
 * that a record the transaction cannot see raises a serialization failure
 * (40001, retryable) instead of silently updating nothing.
 */
static int
run(KeyTable *t, StorageQuery q, Datum *values, const char *nulls,
	bool read_only, int expected)
{
	int			rc;
	Snapshot	snapshot = InvalidSnapshot;
	Snapshot	crosscheck = InvalidSnapshot;

	if (read_only)
		snapshot = GetLatestSnapshot();
	else if (IsolationUsesXactSnapshot())
	{
		snapshot = GetLatestSnapshot();
		crosscheck = GetTransactionSnapshot();
	}
	rc = SPI_execute_snapshot(get_plan(t, q), values, nulls, snapshot,
							  crosscheck, read_only, !read_only, 0);
	if (rc != expected)
		elog(ERROR, "idempotency storage query %d failed: %s",
			 (int) q, SPI_result_code_string(rc));
	return rc;
}

static inline Datum
text_datum(const char *s, int len)
{
	return PointerGetDatum(cstring_to_text_with_len(s, len));
}

/*
 * Finds the row of k in the primary key, as the latest snapshot sees it
 * (plus the caller's own changes), and stores it in slot.  Returns whether
 * there is one.
 */
static bool
probe(Relation rel, Relation idx, const IdemKey *k, TupleTableSlot *slot)
{
	ScanKeyData skey[2];
	Snapshot	snapshot;
	IndexScanDesc scan;
	bool		found;

	ScanKeyEntryInitialize(&skey[0], 0, 1, BTEqualStrategyNumber, InvalidOid,
						   idx->rd_indcollation[0], F_TEXTEQ,
						   text_datum(k->scope, k->scope_len));
	ScanKeyEntryInitialize(&skey[1], 0, 2, BTEqualStrategyNumber, InvalidOid,
						   idx->rd_indcollation[1], F_TEXTEQ,
						   text_datum(k->key, k->key_len));

	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = index_beginscan(rel, idx, snapshot, 2, 0);
	index_rescan(scan, skey, 2, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	if (found)
		slot_getallattrs(slot);
	index_endscan(scan);
	UnregisterSnapshot(snapshot);
	return found;
}

/*
 * Reads the record of k as the latest committed state (plus the caller's
 * own uncommitted changes).  Values are copied into the caller's memory
 * context.
 *
 * This is the call every reserve, commit and replay makes, so it probes
 * the primary key directly instead of going through SPI and the executor.
 */
static void
fill_record(const Datum *v, const bool *n, IdemRecord *rec)
{
	rec->found = true;
	rec->committed = (strcmp(TextDatumGetCString(v[Anum_state - 1]),
							 "committed") == 0);
	rec->request_hash = n[Anum_request_hash - 1] ? NULL :
		TextDatumGetCString(v[Anum_request_hash - 1]);
	rec->status_null = n[Anum_status - 1];
	rec->status = n[Anum_status - 1] ? 0 : DatumGetInt32(v[Anum_status - 1]);
	rec->headers = n[Anum_headers - 1] ? NULL :
		DatumGetJsonbPCopy(v[Anum_headers - 1]);
	rec->body = n[Anum_body - 1] ? NULL :
		DatumGetByteaPCopy(v[Anum_body - 1]);
	rec->attempt = DatumGetInt32(v[Anum_attempt - 1]);
	rec->ttl = *DatumGetIntervalP(v[Anum_ttl - 1]);
	rec->created_at = DatumGetTimestampTz(v[Anum_created_at - 1]);
	rec->expires_at = DatumGetTimestampTz(v[Anum_expires_at - 1]);
	rec->has_owner = !n[Anum_owner_pid - 1] && !n[Anum_owner_started - 1];
	rec->owner_pid = n[Anum_owner_pid - 1] ? 0 :
		DatumGetInt32(v[Anum_owner_pid - 1]);
	rec->owner_started = n[Anum_owner_started - 1] ? 0 :
		DatumGetTimestampTz(v[Anum_owner_started - 1]);
	if (cache.has_leases)
	{
		rec->owner_token = n[Anum_owner_token - 1] ? NULL :
			TextDatumGetCString(v[Anum_owner_token - 1]);
		if (!n[Anum_fenced_tokens - 1])
		{
			Datum	   *elems;
			bool	   *enulls;
			int			nelems;

			deconstruct_array(DatumGetArrayTypeP(v[Anum_fenced_tokens - 1]),
							  TEXTOID, -1, false, TYPALIGN_INT,
							  &elems, &enulls, &nelems);
			rec->fenced_tokens = palloc(sizeof(char *) * Max(nelems, 1));
			for (int i = 0; i < nelems; i++)
			{
				if (!enulls[i])
					rec->fenced_tokens[rec->nfenced++] =
						TextDatumGetCString(elems[i]);
			}
		}
		rec->has_lease = !n[Anum_lease_expires_at - 1] &&
			!n[Anum_lease - 1];
		if (rec->has_lease)
		{
			rec->lease = *DatumGetIntervalP(v[Anum_lease - 1]);
			rec->lease_expires_at =
				DatumGetTimestampTz(v[Anum_lease_expires_at - 1]);
		}
	}
}

/*
 * idem_storage_read for a table that is not a heap of its own (a
 * partitioned table, another access method): through the executor.
 */
static void
read_by_query(KeyTable *t, const IdemKey *k, IdemRecord *rec)
{
	IdemStorageCall call;
	MemoryContext callercxt = CurrentMemoryContext;
	Datum		values[2];

	values[0] = text_datum(k->scope, k->scope_len);
	values[1] = text_datum(k->key, k->key_len);

	idem_storage_begin(&call);
	run(t, Q_READ, values, NULL, true, SPI_OK_SELECT);
	if (SPI_processed > 0)
	{
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Datum	   *v = palloc(sizeof(Datum) * desc->natts);
		bool	   *n = palloc(sizeof(bool) * desc->natts);
		MemoryContext spicxt;

		heap_deform_tuple(SPI_tuptable->vals[0], desc, v, n);
		/* the record outlives SPI_finish */
		spicxt = MemoryContextSwitchTo(callercxt);
		fill_record(v, n, rec);
		MemoryContextSwitchTo(spicxt);
	}
	idem_storage_end(&call);
}

void
idem_storage_read(const IdemKey *k, IdemRecord *rec)
{
	KeyTable   *t;
	Relation	rel;
	Relation	idx;
	TupleTableSlot *slot;

	memset(rec, 0, sizeof(IdemRecord));
	t = local_table(k);
	if (!t->direct_reads)
	{
		read_by_query(t, k, rec);
		return;
	}

	rel = table_open(t->relid, AccessShareLock);
	idx = index_open(t->pkey_relid, AccessShareLock);
	slot = table_slot_create(rel, NULL);

	if (probe(rel, idx, k, slot))
		fill_record(slot->tts_values, slot->tts_isnull, rec);

	ExecDropSingleTupleTableSlot(slot);
	index_close(idx, AccessShareLock);
	table_close(rel, AccessShareLock);
}

/*
 * The two writes every request makes, a new reservation and the commit of
 * one's own, go to the heap and the primary key directly, as catalog
 * updates do: no executor to start, no plan to check.  The caller holds
 * the key's lock, so no other session writes the row meanwhile.  This is
 * done only while the table has nothing else to maintain or fire (see
 * check_key_table); what the executor would also check, a read-only
 * transaction, is checked here.
 */
static void
open_for_write(KeyTable *t, const char *what, Relation *rel, Relation *idx)
{
	PreventCommandIfReadOnly(what);
	*rel = table_open(t->relid, RowExclusiveLock);
	*idx = index_open(t->pkey_relid, RowExclusiveLock);
}

/*
 * Adds the index entry of a new heap tuple (not for a HOT update).  With
 * UNIQUE_CHECK_PARTIAL a duplicate key is not an error: the entry is added
 * all the same and false is returned.
 */
static bool
index_tuple(Relation rel, Relation idx, HeapTuple tuple,
			IndexUniqueCheck check, bool unchanged)
{
	Datum		values[2];
	bool		isnull[2] = {false, false};
	IndexInfo  *ii = BuildIndexInfo(idx);
	bool		unique;

	values[0] = heap_getattr(tuple, Anum_scope, RelationGetDescr(rel), &isnull[0]);
	values[1] = heap_getattr(tuple, Anum_key, RelationGetDescr(rel), &isnull[1]);
	unique = index_insert(idx, values, isnull, &tuple->t_self, rel, check,
						  unchanged, ii);
	pfree(ii);
	return unique;
}

/*
 * Sets the owner columns of a new or renewed in-flight record: a session
 * owner is this backend, a lease owner its token and lease.
 */
static void
owner_values(const IdemOwner *owner, Datum *values, bool *nulls)
{
	memset(nulls + Anum_owner_pid - 1, true,
		   sizeof(bool) * (lengthof(key_columns) - Anum_owner_pid + 1));
	if (!owner->lease)
	{
		values[Anum_owner_pid - 1] = Int32GetDatum(MyProcPid);
		values[Anum_owner_started - 1] = TimestampTzGetDatum(MyStartTimestamp);
		nulls[Anum_owner_pid - 1] = nulls[Anum_owner_started - 1] = false;
	}
	if (!cache.has_leases)
		return;
	if (owner->token)
	{
		values[Anum_owner_token - 1] = CStringGetTextDatum(owner->token);
		nulls[Anum_owner_token - 1] = false;
	}
	if (owner->lease)
	{
		values[Anum_lease - 1] = IntervalPGetDatum(&owner->lease_len);
		values[Anum_lease_expires_at - 1] =
			TimestampTzGetDatum(owner->lease_expires_at);
		nulls[Anum_lease - 1] = nulls[Anum_lease_expires_at - 1] = false;
	}
}

/* The five owner parameters of Q_INSERT and Q_RENEW, from values[0] on */
static void
owner_params(const IdemOwner *owner, Datum *values, char *nulls)
{
	Datum		ov[lengthof(key_columns)];
	bool		on[lengthof(key_columns)];

	owner_values(owner, ov, on);
	for (int i = 0; i < 5; i++)
	{
		values[i] = ov[Anum_owner_pid - 1 + i];
		nulls[i] = on[Anum_owner_pid - 1 + i] ? 'n' : ' ';
	}
}

/* Runs a write of one record; returns whether it hit one row */
static bool
write_one(KeyTable *t, StorageQuery q, Datum *values, const char *nulls,
		  int expected)
{
	IdemStorageCall call;
	bool		done;

	idem_storage_begin(&call);
	run(t, q, values, nulls, false, expected);
	done = (SPI_processed == 1);
	idem_storage_end(&call);
	return done;
}

/*
 * idem_storage_insert through the executor, which maintains every index and
 * fires every trigger.
 */
static bool
insert_by_query(KeyTable *t, const IdemKey *k, const char *request_hash,
				const Interval *ttl, TimestampTz now, TimestampTz expires_at,
				const IdemOwner *owner)
{
	Datum		values[11];
	char		nulls[11] = "           ";

	values[0] = text_datum(k->scope, k->scope_len);
	values[1] = text_datum(k->key, k->key_len);
	if (request_hash)
		values[2] = CStringGetTextDatum(request_hash);
	else
		nulls[2] = 'n';
	values[3] = IntervalPGetDatum(ttl);
	values[4] = TimestampTzGetDatum(now);
	values[5] = TimestampTzGetDatum(expires_at);
	owner_params(owner, values + 6, nulls + 6);
	return write_one(t, Q_INSERT, values, nulls, SPI_OK_INSERT);
}

/*
 * Inserts a new in-flight record for owner.  Returns false when a record
 * of k exists already.  The caller holds k's lock.
 */
bool
idem_storage_insert(const IdemKey *k, const char *request_hash,
					const Interval *ttl, TimestampTz now,
					TimestampTz expires_at, const IdemOwner *owner)
{
	KeyTable   *t;
	Relation	rel;
	Relation	idx;
	Datum		values[lengthof(key_columns)];
	bool		nulls[lengthof(key_columns)];
	HeapTuple	tuple;
	bool		inserted;

	t = local_table(k);
	if (!t->direct_writes)
		return insert_by_query(t, k, request_hash, ttl, now, expires_at, owner);
	open_for_write(t, "idem_reserve", &rel, &idx);

	memset(nulls, true, sizeof(nulls));
	values[Anum_scope - 1] = text_datum(k->scope, k->scope_len);
	values[Anum_key - 1] = text_datum(k->key, k->key_len);
	values[Anum_state - 1] = CStringGetTextDatum("in_flight");
	if (request_hash)
		values[Anum_request_hash - 1] = CStringGetTextDatum(request_hash);
	values[Anum_attempt - 1] = Int32GetDatum(1);
	values[Anum_ttl - 1] = IntervalPGetDatum(ttl);
	values[Anum_created_at - 1] = TimestampTzGetDatum(now);
	values[Anum_expires_at - 1] = TimestampTzGetDatum(expires_at);
	nulls[Anum_scope - 1] = nulls[Anum_key - 1] = nulls[Anum_state - 1] = false;
	nulls[Anum_request_hash - 1] = (request_hash == NULL);
	nulls[Anum_attempt - 1] = nulls[Anum_ttl - 1] = false;
	nulls[Anum_created_at - 1] = nulls[Anum_expires_at - 1] = false;
	owner_values(owner, values, nulls);

	tuple = heap_form_tuple(RelationGetDescr(rel), values, nulls);
	simple_heap_insert(rel, tuple);

	/*
	 * A record created between the caller's read and its lock shows up as
	 * a duplicate in the primary key: then take the new tuple back (the
	 * index entry left behind points to a dead tuple) and let the caller
	 * read again.  Checking here rather than probing first saves a descent
	 * of the index on every new key.
	 */
	inserted = index_tuple(rel, idx, tuple, UNIQUE_CHECK_PARTIAL, false);
	CommandCounterIncrement();
	if (!inserted)
	{
		/* the insert must be visible to its own delete */
		simple_heap_delete(rel, &tuple->t_self);
		CommandCounterIncrement();
	}
	heap_freetuple(tuple);

	index_close(idx, RowExclusiveLock);
	table_close(rel, RowExclusiveLock);
	return inserted;
}

/*
 * Makes an existing record a new in-flight reservation of owner: an expired
 * record starts over, a gone owner's one is taken over.  Returns false when
 * the record is gone (a concurrent purge deleted it).
 */
bool
idem_storage_renew(const IdemKey *k, const char *request_hash, int32 attempt,
				   const Interval *ttl, TimestampTz now,
				   TimestampTz expires_at, const IdemOwner *owner)
{
	KeyTable   *t = local_table(k);
	Datum		values[12];
	char		nulls[12] = "            ";

	values[0] = text_datum(k->scope, k->scope_len);
	values[1] = text_datum(k->key, k->key_len);
	if (request_hash)
		values[2] = CStringGetTextDatum(request_hash);
	else
		nulls[2] = 'n';
	values[3] = Int32GetDatum(attempt);
	values[4] = IntervalPGetDatum(ttl);
	values[5] = TimestampTzGetDatum(now);
	values[6] = TimestampTzGetDatum(expires_at);
	owner_params(owner, values + 7, nulls + 7);
	return write_one(t, Q_RENEW, values, nulls, SPI_OK_UPDATE);
}

/*
 * Stores the response on the in-flight record.  Returns false when there
 * was no in-flight record to update.
 */
bool
idem_storage_commit(const IdemKey *k, const char *request_hash,
					const char *token,
					bool status_null, int32 status, Jsonb *headers,
					bytea *body, TimestampTz now, TimestampTz expires_at)
{
	KeyTable   *t = local_table(k);
	Datum		values[9];
	char		nulls[9] = "         ";

	values[0] = text_datum(k->scope, k->scope_len);
	values[1] = text_datum(k->key, k->key_len);
	if (request_hash)
		values[2] = CStringGetTextDatum(request_hash);
	else
		nulls[2] = 'n';
	values[3] = Int32GetDatum(status);
	if (status_null)
		nulls[3] = 'n';
	values[4] = JsonbPGetDatum(headers);
	if (headers == NULL)
		nulls[4] = 'n';
	values[5] = PointerGetDatum(body);
	if (body == NULL)
		nulls[5] = 'n';
	values[6] = TimestampTzGetDatum(now);
	values[7] = TimestampTzGetDatum(expires_at);
	if (token)
		values[8] = CStringGetTextDatum(token);
	else
		nulls[8] = 'n';

	return write_one(t, Q_COMMIT, values, nulls, SPI_OK_UPDATE);
}

static bool
text_equals(Datum d, bool isnull, const char *s)
{
	if (isnull || s == NULL)
		return isnull && s == NULL;
	return strcmp(TextDatumGetCString(d), s) == 0;
}

/*
 * The common commit: the record is in flight, the caller owns it (a lease
 * owner by its token; a session owner is this session, with the same token
 * or none on both sides), and the hashes agree.  Returns false when any of
 * that does not hold, for the caller to find out why.  The caller holds
 * k's lock.  *was_lease tells a committed lease owner.
 */
bool
idem_storage_commit_mine(const IdemKey *k, const char *request_hash,
						 const char *token,
						 bool status_null, int32 status, Jsonb *headers,
						 bytea *body, TimestampTz now, bool *was_lease)
{
	KeyTable   *t;
	Relation	rel;
	Relation	idx;
	TupleTableSlot *slot;
	Datum	   *v;
	bool	   *n;
	bool		mine = false;

	*was_lease = false;
	t = local_table(k);
	if (!t->direct_writes)
		return false;			/* the caller's general path commits it */
	open_for_write(t, "idem_commit", &rel, &idx);
	slot = table_slot_create(rel, NULL);
	if (probe(rel, idx, k, slot))
	{
		v = slot->tts_values;
		n = slot->tts_isnull;
		if (cache.has_leases && !n[Anum_lease_expires_at - 1])
		{
			/* a lease that ran out, past the ttl too: the record is absent */
			*was_lease = true;
			mine = token != NULL &&
				text_equals(v[Anum_owner_token - 1],
							n[Anum_owner_token - 1], token) &&
				(idem_lease_alive(DatumGetTimestampTz(v[Anum_lease_expires_at - 1])) ||
				 DatumGetTimestampTz(v[Anum_expires_at - 1]) > now);
		}
		else
			mine = !n[Anum_owner_pid - 1] && !n[Anum_owner_started - 1] &&
				idem_owner_is_me(DatumGetInt32(v[Anum_owner_pid - 1]),
								 DatumGetTimestampTz(v[Anum_owner_started - 1])) &&
				(cache.has_leases ?
				 text_equals(v[Anum_owner_token - 1],
							 n[Anum_owner_token - 1], token) :
				 token == NULL);
		mine = mine &&
			strcmp(TextDatumGetCString(v[Anum_state - 1]), "in_flight") == 0;
		if (mine && request_hash != NULL && !n[Anum_request_hash - 1] &&
			strcmp(TextDatumGetCString(v[Anum_request_hash - 1]),
				   request_hash) != 0)
			mine = false;
	}

	if (mine)
	{
		Datum		repl_values[lengthof(key_columns)];
		bool		repl_nulls[lengthof(key_columns)];
		bool		repl[lengthof(key_columns)];
		HeapTuple	oldtup;
		HeapTuple	newtup;
		TimestampTz expires_at;

		expires_at = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
															 TimestampTzGetDatum(now),
															 v[Anum_ttl - 1]));
		memset(repl, false, sizeof(repl));
		memset(repl_nulls, false, sizeof(repl_nulls));
#define SET(col, val, isnull) \
		(repl[(col) - 1] = true, repl_values[(col) - 1] = (val), \
		 repl_nulls[(col) - 1] = (isnull))
		SET(Anum_state, CStringGetTextDatum("committed"), false);
		if (n[Anum_request_hash - 1] && request_hash != NULL)
			SET(Anum_request_hash, CStringGetTextDatum(request_hash), false);
		SET(Anum_status, Int32GetDatum(status), status_null);
		SET(Anum_headers, PointerGetDatum(headers), headers == NULL);
		SET(Anum_body, PointerGetDatum(body), body == NULL);
		SET(Anum_committed_at, TimestampTzGetDatum(now), false);
		SET(Anum_expires_at, TimestampTzGetDatum(expires_at), false);
		SET(Anum_owner_pid, (Datum) 0, true);
		SET(Anum_owner_started, (Datum) 0, true);
		if (cache.has_leases)
		{
			SET(Anum_lease, (Datum) 0, true);
			SET(Anum_lease_expires_at, (Datum) 0, true);
		}
#undef SET

		oldtup = ExecCopySlotHeapTuple(slot);
		newtup = heap_modify_tuple(oldtup, RelationGetDescr(rel),
								   repl_values, repl_nulls, repl);
		ExecClearTuple(slot);
		simple_heap_update(rel, &oldtup->t_self, newtup);
		if (!HeapTupleIsHeapOnly(newtup))
			(void) index_tuple(rel, idx, newtup, UNIQUE_CHECK_YES, true);
		heap_freetuple(newtup);
		heap_freetuple(oldtup);
		CommandCounterIncrement();
	}

	ExecDropSingleTupleTableSlot(slot);
	index_close(idx, RowExclusiveLock);
	table_close(rel, RowExclusiveLock);
	return mine;
}

/*
 * Renews the lease of owner's in-flight record to owner->lease_expires_at.
 * Returns false when the record is not the owner's lease (any more).  The
 * caller holds k's lock.
 */
bool
idem_storage_extend(const IdemKey *k, const IdemOwner *owner)
{
	KeyTable   *t = local_table(k);
	Datum		values[5];

	Assert(owner->lease && owner->token != NULL);
	values[0] = text_datum(k->scope, k->scope_len);
	values[1] = text_datum(k->key, k->key_len);
	values[2] = CStringGetTextDatum(owner->token);
	values[3] = IntervalPGetDatum(&owner->lease_len);
	values[4] = TimestampTzGetDatum(owner->lease_expires_at);

	return write_one(t, Q_EXTEND, values, NULL, SPI_OK_UPDATE);
}

/* Runs a DELETE that takes (scope, key); returns whether it hit a row */
static bool
delete_key(StorageQuery q, const IdemKey *k)
{
	KeyTable   *t = local_table(k);
	Datum		values[2];

	values[0] = text_datum(k->scope, k->scope_len);
	values[1] = text_datum(k->key, k->key_len);

	return write_one(t, q, values, NULL, SPI_OK_DELETE);
}

/*
 * Deletes the in-flight record of k.  Returns whether there was one.
 */
bool
idem_storage_delete(const IdemKey *k)
{
	return delete_key(Q_DELETE, k);
}

/*
 * Deletes the committed record of k.  Returns whether there was one.
 */
bool
idem_storage_evict(const IdemKey *k)
{
	return delete_key(Q_EVICT, k);
}

/*
 * Marks this session's in-flight record of k as having no owner.
 */
void
idem_storage_abandon(const IdemKey *k)
{
	IdemStorageCall call;
	KeyTable   *t = local_table(k);
	Datum		values[4];

	values[0] = text_datum(k->scope, k->scope_len);
	values[1] = text_datum(k->key, k->key_len);
	values[2] = Int32GetDatum(MyProcPid);
	values[3] = TimestampTzGetDatum(MyStartTimestamp);

	idem_storage_begin(&call);
	run(t, Q_ABANDON, values, NULL, false, SPI_OK_UPDATE);
	idem_storage_end(&call);
}

/*
 * The tables that may hold records on this node: the key table, or, when
 * Citus distributes it, each of its shards.
 */
int
idem_storage_ntables(void)
{
	if (!cache.valid)
		refresh_cache();
	return cache.distributed ? cache.nshards : 1;
}

/*
 * The i-th of them (i < idem_storage_ntables()), NULL when it is a shard
 * placed on another node.
 */
IdemTable *
idem_storage_table(int i)
{
	if (!cache.distributed)
		return &cache.main;
	return shard_table(i);
}

Oid
idem_storage_table_relid(const IdemTable *t)
{
	return t->relid;
}

/*
 * Opens a scan of t's records that expired by now, of the given scopes
 * (NULL: all), whose tuples lie in blocks [from, to), for
 * idem_storage_expired_fetch.  Inside idem_storage_begin/end.
 */
struct PortalData *
idem_storage_expired_open(IdemTable *t, TimestampTz now, ArrayType *scopes,
						  BlockNumber from, BlockNumber to)
{
	Datum		values[4];
	char		nulls[4] = "    ";
	ItemPointerData lo;
	ItemPointerData hi;

	ItemPointerSet(&lo, from, 0);
	ItemPointerSet(&hi, to, 0);
	values[0] = TimestampTzGetDatum(now);
	values[1] = PointerGetDatum(scopes);
	if (scopes == NULL)
		nulls[1] = 'n';
	values[2] = PointerGetDatum(&lo);
	values[3] = PointerGetDatum(&hi);

	return SPI_cursor_open(NULL, get_plan(t, Q_PURGE_SCAN), values, nulls,
						   true);
}

/*
 * Up to want more rows of the scan, into rows; returns how many (0 at the
 * end).
 */
int
idem_storage_expired_fetch(struct PortalData *scan, int want,
						   IdemExpired *rows)
{
	int			nrows;

	SPI_cursor_fetch(scan, true, want);
	nrows = (int) SPI_processed;
	for (int i = 0; i < nrows; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		IdemExpired *row = &rows[i];
		bool		isnull;
		bool		started_null;
		Datum		d;

		row->tid = *(ItemPointer) DatumGetPointer(SPI_getbinval(tup, desc, 1,
																&isnull));
		row->committed = DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull));
		row->owner_pid = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
		row->owner_started = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4,
															   &started_null));
		row->has_owner = !isnull && !started_null;
		d = SPI_getbinval(tup, desc, 5, &isnull);
		row->has_lease = !isnull;
		row->lease_expires_at = isnull ? 0 : DatumGetTimestampTz(d);
	}
	SPI_freetuptable(SPI_tuptable);
	return nrows;
}

void
idem_storage_expired_close(struct PortalData *scan)
{
	SPI_cursor_close(scan);
}

/*
 * Deletes the records of t at the given TIDs that are still expired by now
 * (one renewed meanwhile has a new ctid and a new expiry, and is left
 * alone).  Returns how many went.  Inside idem_storage_begin/end.
 */
uint64
idem_storage_delete_expired(IdemTable *t, const ItemPointerData *tids,
							int ntids, TimestampTz now)
{
	Datum		values[2];
	Datum	   *elems = palloc(sizeof(Datum) * ntids);
	ArrayType  *arr;
	uint64		n;

	for (int i = 0; i < ntids; i++)
		elems[i] = PointerGetDatum(&tids[i]);
	arr = construct_array(elems, ntids, TIDOID, sizeof(ItemPointerData),
						  false, TYPALIGN_SHORT);
	values[0] = PointerGetDatum(arr);
	values[1] = TimestampTzGetDatum(now);
	run(t, Q_PURGE_DELETE, values, NULL, false, SPI_OK_DELETE);
	n = SPI_processed;
	pfree(arr);
	pfree(elems);
	return n;
}

/*
 * ALTER TABLE ... SET LOGGED / UNLOGGED, as the table's owner.
 */
void
idem_storage_set_logged(bool logged)
{
	IdemStorageCall call;
	char	   *sql;
	int			rc;

	if (!cache.valid)
		refresh_cache();
	idem_storage_begin(&call);
	sql = psprintf("ALTER TABLE %s.idem_keys SET %s", cache.schema,
				   logged ? "LOGGED" : "UNLOGGED");
	rc = SPI_execute(sql, false, 0);
	if (rc != SPI_OK_UTILITY)
		elog(ERROR, "SPI_execute failed for \"%s\": %s",
			 sql, SPI_result_code_string(rc));
	idem_storage_end(&call);
}

/*
 * The scopes role is confined to, palloc'd in the caller's context; *n = 0
 * when it is not confined, or when the installed version of the extension
 * has no bindings.
 */
char **
idem_storage_confined_scopes(Oid role, int *n, Oid *confinement_relid)
{
	IdemStorageCall call;
	MemoryContext callercxt = CurrentMemoryContext;
	Datum		values[1];
	char	  **scopes = NULL;

	*n = 0;
	if (!cache.valid)
		refresh_cache();
	*confinement_relid = cache.confinement_relid;
	if (!OidIsValid(cache.confinement_relid))
		return NULL;

	values[0] = ObjectIdGetDatum(role);
	idem_storage_begin(&call);
	run(&cache.main, Q_CONFINED, values, NULL, true, SPI_OK_SELECT);
	if (SPI_processed > 0)
	{
		*n = (int) SPI_processed;
		scopes = MemoryContextAlloc(callercxt, sizeof(char *) * *n);
		for (int i = 0; i < *n; i++)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[i],
										  SPI_tuptable->tupdesc, 1, &isnull);

			scopes[i] = MemoryContextStrdup(callercxt, TextDatumGetCString(d));
		}
	}
	idem_storage_end(&call);
	return scopes;
}
