/*-------------------------------------------------------------------------
 *
 * idem_storage.c
 *	  Access to the key table: reads probe the primary key directly; every
 *	  write of one record takes one path, to the heap and the primary key
 *	  directly when nothing else is to be maintained, through SPI
 *	  otherwise; the bulk work (the purge's scan and deletes, the scopes of
 *	  a confined role, SET LOGGED) goes through SPI.
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

/*
 * The columns of the key table, in order, as the install scripts create
 * them (version 1.2 added the four from owner_token on): the numbers of
 * the columns, the list the table is checked against, and the column lists
 * of the queries below are all made from this one list.
 */
#define KEY_COLUMNS(COLUMN) \
	COLUMN(scope, TEXTOID) \
	COLUMN(key, TEXTOID) \
	COLUMN(state, TEXTOID) \
	COLUMN(request_hash, TEXTOID) \
	COLUMN(status, INT4OID) \
	COLUMN(headers, JSONBOID) \
	COLUMN(body, BYTEAOID) \
	COLUMN(attempt, INT4OID) \
	COLUMN(ttl, INTERVALOID) \
	COLUMN(created_at, TIMESTAMPTZOID) \
	COLUMN(expires_at, TIMESTAMPTZOID) \
	COLUMN(committed_at, TIMESTAMPTZOID) \
	COLUMN(owner_pid, INT4OID) \
	COLUMN(owner_started, TIMESTAMPTZOID) \
	COLUMN(owner_token, TEXTOID) \
	COLUMN(lease, INTERVALOID) \
	COLUMN(lease_expires_at, TIMESTAMPTZOID) \
	COLUMN(fenced_tokens, TEXTARRAYOID)

/* Anum_scope = 1, Anum_key, ... */
enum
{
	Anum_none = 0,
#define COLUMN_ANUM(name, type) Anum_##name,
	KEY_COLUMNS(COLUMN_ANUM)
#undef COLUMN_ANUM
	Anum_end
};

#define NUM_KEY_COLUMNS		(Anum_end - 1)

/* columns before version 1.2, which added the lease columns */
#define NUM_LEGACY_COLUMNS	Anum_owner_started

static const struct
{
	const char *name;
	Oid			type;
}			key_columns[NUM_KEY_COLUMNS] = {
#define COLUMN_DEF(name, type) {#name, type},
	KEY_COLUMNS(COLUMN_DEF)
#undef COLUMN_DEF
};

/*
 * The queries of this file that are not the write of one record (those
 * are made from the columns they set: see write_query).
 */
typedef enum StorageQuery
{
	Q_READ,
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
								 * {table} = the table (or shard), qualified;
								 * {columns} = the key table's columns */
	const char *lease_part;
	const char *legacy_part;
	int			nargs;
	Oid			argtypes[4];
} QueryDef;

#define EQ " OPERATOR(pg_catalog.=) "

static const QueryDef query_defs[NUM_QUERIES] = {
	/* reads when the table cannot be accessed directly */
	[Q_READ] = {
		"SELECT {columns} FROM {table} WHERE scope" EQ "$1 AND key" EQ "$2",
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
	/*
	 * The purge takes only the rows no one else has locked: it never waits
	 * for a row lock, so two purges (each with its own scan position, and
	 * idem_purge() deleting batch after batch in one transaction) cannot
	 * deadlock, and a renewal or takeover under way wins.
	 */
	[Q_PURGE_DELETE] = {
		"DELETE FROM {table} WHERE ctid" EQ "ANY (ARRAY("
		"SELECT ctid FROM {table} WHERE ctid" EQ "ANY ($1)"
		" AND expires_at OPERATOR(pg_catalog.<=) $2"
		" FOR UPDATE SKIP LOCKED))",
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

/* Writes of one record through SPI (see write_query) */
typedef enum WriteKind
{
	WRITE_INSERT,
	WRITE_UPDATE,
	WRITE_DELETE
} WriteKind;

/* the kinds of writes there are, with the columns each sets */
#define MAX_WRITE_PLANS 8

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
	int			nwrites;
	struct
	{
		int			kind;		/* WriteKind */
		uint32		mask;		/* the columns set, bit attnum - 1 */
		SPIPlanPtr	plan;
	}			writes[MAX_WRITE_PLANS];
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

/* How many of the columns the key table has */
static inline int
num_columns(void)
{
	return cache.has_leases ? NUM_KEY_COLUMNS : NUM_LEGACY_COLUMNS;
}

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
	int			ncols = NUM_KEY_COLUMNS;
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
	for (int i = 0; i < t->nwrites; i++)
		SPI_freeplan(t->writes[i].plan);
	t->nwrites = 0;
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
	cache.has_leases = (ncols == NUM_KEY_COLUMNS);

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
		else if (strncmp(sql, "{columns}", 9) == 0)
		{
			for (int i = 0; i < num_columns(); i++)
				appendStringInfo(&buf, "%s%s", i > 0 ? ", " : "",
								 key_columns[i].name);
			sql += 9;
		}
		else
			appendStringInfoChar(&buf, *sql++);
	}
	return buf.data;
}

static SPIPlanPtr
prepare_kept(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s",
			 sql, SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");
	return plan;
}

/*
 * The query of a write of one record through SPI, made from the columns
 * it sets: params are the columns of its parameters, $1 the scope and $2
 * the key, then the columns set.
 *	INSERT INTO t (scope, key, c3, ...) VALUES ($1, $2, $3, ...)
 *		ON CONFLICT DO NOTHING
 *	UPDATE t SET c3 = $3, ... WHERE scope = $1 AND key = $2
 *	DELETE FROM t WHERE scope = $1 AND key = $2
 */
static SPIPlanPtr
write_query(KeyTable *t, WriteKind kind, int nparams, const int *params)
{
	StringInfoData buf;
	Oid			argtypes[NUM_KEY_COLUMNS];
	SPIPlanPtr	plan;

	for (int i = 0; i < nparams; i++)
		argtypes[i] = key_columns[params[i] - 1].type;
	initStringInfo(&buf);
	switch (kind)
	{
		case WRITE_INSERT:
			appendStringInfo(&buf, "INSERT INTO %s (", t->name);
			for (int i = 0; i < nparams; i++)
				appendStringInfo(&buf, "%s%s", i > 0 ? ", " : "",
								 key_columns[params[i] - 1].name);
			appendStringInfoString(&buf, ") VALUES (");
			for (int i = 0; i < nparams; i++)
				appendStringInfo(&buf, "%s$%d", i > 0 ? ", " : "", i + 1);
			appendStringInfoString(&buf, ") ON CONFLICT DO NOTHING");
			break;
		case WRITE_UPDATE:
			appendStringInfo(&buf, "UPDATE %s SET ", t->name);
			for (int i = 2; i < nparams; i++)
				appendStringInfo(&buf, "%s%s = $%d", i > 2 ? ", " : "",
								 key_columns[params[i] - 1].name, i + 1);
			appendStringInfoString(&buf, " WHERE scope" EQ "$1 AND key" EQ "$2");
			break;
		case WRITE_DELETE:
			appendStringInfo(&buf, "DELETE FROM %s WHERE scope" EQ "$1"
							 " AND key" EQ "$2", t->name);
			nparams = 2;
			break;
	}
	plan = prepare_kept(buf.data, nparams, argtypes);
	pfree(buf.data);
	return plan;
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

		t->plans[q] = prepare_kept(sql, def->nargs, (Oid *) def->argtypes);
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
static void
run_plan(SPIPlanPtr plan, Datum *values, const char *nulls, bool read_only,
		 int expected)
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
	rc = SPI_execute_snapshot(plan, values, nulls, snapshot, crosscheck,
							  read_only, !read_only, 0);
	if (rc != expected)
		elog(ERROR, "idempotency storage query failed: %s",
			 SPI_result_code_string(rc));
}

static void
run(KeyTable *t, StorageQuery q, Datum *values, const char *nulls,
	bool read_only, int expected)
{
	run_plan(get_plan(t, q), values, nulls, read_only, expected);
}

static inline Datum
text_datum(const char *s, int len)
{
	return PointerGetDatum(cstring_to_text_with_len(s, len));
}

static bool
text_column_is(TupleTableSlot *slot, int attnum, const char *s, int len)
{
	text	   *t;

	if (slot->tts_isnull[attnum - 1])
		return false;
	t = DatumGetTextPP(slot->tts_values[attnum - 1]);
	return VARSIZE_ANY_EXHDR(t) == len && memcmp(VARDATA_ANY(t), s, len) == 0;
}

/* whether the tuple in slot (all its attributes deformed) is k's */
static inline bool
tuple_is_of(TupleTableSlot *slot, const IdemKey *k)
{
	return text_column_is(slot, Anum_key, k->key, k->key_len) &&
		text_column_is(slot, Anum_scope, k->scope, k->scope_len);
}

/*
 * Finds the row of k where its location hint says it is (idem_hint.c), as
 * the latest snapshot sees it (plus the caller's own changes), and stores
 * it in slot.  False when the hint does not lead to k's record.
 */
static bool
fetch_hinted(Relation rel, const IdemKey *k, TupleTableSlot *slot)
{
	if (!idem_hint_fetch(rel, k, slot))
		return false;
	slot_getallattrs(slot);
	if (tuple_is_of(slot, k))
		return true;
	ExecClearTuple(slot);
	return false;
}

/*
 * Finds the row of k in the primary key, as the latest snapshot sees it
 * (plus the caller's own changes), and stores it in slot.  Returns whether
 * there is one, and leaves a location hint for the next look-up.
 *
 * index_getnext_slot() without the loop for non-MVCC snapshots, so as to
 * know the tid the index entry points to: the root of the HOT chain, where
 * the hint must point, while the slot gets the chain's visible member.
 */
static bool
probe(Relation rel, Relation idx, const IdemKey *k, TupleTableSlot *slot)
{
	ScanKeyData skey[2];
	Snapshot	snapshot;
	IndexScanDesc scan;
	ItemPointer tid;
	ItemPointerData root;
	bool		found = false;

	ScanKeyEntryInitialize(&skey[0], 0, 1, BTEqualStrategyNumber, InvalidOid,
						   idx->rd_indcollation[0], F_TEXTEQ,
						   text_datum(k->scope, k->scope_len));
	ScanKeyEntryInitialize(&skey[1], 0, 2, BTEqualStrategyNumber, InvalidOid,
						   idx->rd_indcollation[1], F_TEXTEQ,
						   text_datum(k->key, k->key_len));

	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = index_beginscan(rel, idx, snapshot, 2, 0);
	index_rescan(scan, skey, 2, NULL, 0);
	while ((tid = index_getnext_tid(scan, ForwardScanDirection)) != NULL)
	{
		root = *tid;
		if (index_fetch_heap(scan, slot))
		{
			found = true;
			break;
		}
	}
	index_endscan(scan);
	UnregisterSnapshot(snapshot);
	if (found)
	{
		slot_getallattrs(slot);
		idem_hint_set(rel, k, &root, false);
	}
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
	text	   *state;

	rec->found = true;
	state = DatumGetTextPP(v[Anum_state - 1]);
	rec->committed = (VARSIZE_ANY_EXHDR(state) == strlen("committed") &&
					  memcmp(VARDATA_ANY(state), "committed",
							 strlen("committed")) == 0);
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
	slot = table_slot_create(rel, NULL);

	/* the index only when the hint does not lead to the record */
	if (fetch_hinted(rel, k, slot))
		fill_record(slot->tts_values, slot->tts_isnull, rec);
	else
	{
		idx = index_open(t->pkey_relid, AccessShareLock);
		if (probe(rel, idx, k, slot))
			fill_record(slot->tts_values, slot->tts_isnull, rec);
		index_close(idx, AccessShareLock);
	}

	ExecDropSingleTupleTableSlot(slot);
	table_close(rel, AccessShareLock);
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
 * Every write of one record goes through a RecordWrite: write_begin opens
 * it (and reads the record, for a change of one that exists), set_field
 * sets the columns the write changes, write_insert, write_update or
 * write_delete writes, write_end closes.  The caller holds the key's lock,
 * so no other session writes the record meanwhile; only a purge may delete
 * it, when it has expired.
 *
 * Where it is written is chosen in write_begin, once: while the table has
 * nothing else to maintain or fire (see check_key_table), to the heap and
 * the primary key directly, as catalog updates are, with no executor to
 * start and no plan to check; otherwise through the executor (SPI), which
 * maintains every index and fires every trigger, with plans made from the
 * columns the write sets.  A direct write checks what the executor would
 * also check: a read-only transaction, and under REPEATABLE READ and
 * SERIALIZABLE that the transaction can see the record it changes (see
 * run).
 */
typedef struct RecordWrite
{
	KeyTable   *t;
	const IdemKey *k;
	bool		direct;			/* to the heap, else through SPI */
	MemoryContext callercxt;
	/* the record as it is, when read */
	bool		found;
	Datum	   *old_values;
	bool	   *old_nulls;
	/* the columns the write sets */
	Datum		values[NUM_KEY_COLUMNS];
	bool		nulls[NUM_KEY_COLUMNS];
	bool		set[NUM_KEY_COLUMNS];
	/* a direct write's */
	Relation	rel;
	Relation	idx;
	TupleTableSlot *slot;
	bool		wrote;			/* the heap was written */
	/* a write through SPI */
	IdemStorageCall call;
} RecordWrite;

/*
 * Where this transaction last wrote a record directly, so that its next
 * write of the same record in the same transaction (the commit after the
 * reserve, when a handler's writes and its key commit together) fetches
 * the tuple instead of descending the primary key again.
 *
 * It cannot lead astray: under the latest snapshot at most one version of
 * a key is visible, so a visible tuple there with the same scope and key
 * is the record, whatever happened to it since; otherwise the primary key
 * is probed as always.  And it cannot point past the end of the table: a
 * transaction that wrote keeps its lock on the table to its end
 * (write_end), so vacuum cannot truncate it meanwhile, and the hint is
 * for that transaction only (while the subtransaction that wrote is not
 * aborted, and the table keeps its storage: no rewrite since).
 */
typedef struct LastWrite
{
	Oid			relid;			/* InvalidOid: none */
	Oid			relnode;		/* the storage written */
	FullTransactionId top;		/* the transaction that wrote */
	TransactionId xid;			/* the (sub)transaction that wrote */
	ItemPointerData tid;
	int			scope_len;
	int			key_len;
	char		scope[IDEM_MAX_KEY_BYTES];
	char		key[IDEM_MAX_KEY_BYTES];
} LastWrite;

static LastWrite last_write;

static void
remember_write(Relation rel, const IdemKey *k, ItemPointer tid)
{
	last_write.relid = RelationGetRelid(rel);
	last_write.relnode = rel->rd_node.relNode;
	last_write.top = GetTopFullTransactionId();
	last_write.xid = GetCurrentTransactionId();
	last_write.tid = *tid;
	last_write.scope_len = k->scope_len;
	last_write.key_len = k->key_len;
	memcpy(last_write.scope, k->scope, k->scope_len);
	memcpy(last_write.key, k->key, k->key_len);
}

/*
 * probe() for a record this transaction wrote last: the tuple where it
 * wrote it, if the latest snapshot sees it there.
 */
static bool
fetch_last_write(Relation rel, const IdemKey *k, TupleTableSlot *slot)
{
	Snapshot	snapshot;
	bool		found;

	if (last_write.relid != RelationGetRelid(rel) ||
		last_write.relnode != rel->rd_node.relNode ||
		!FullTransactionIdEquals(last_write.top, GetTopFullTransactionIdIfAny()) ||
		!TransactionIdIsCurrentTransactionId(last_write.xid) ||
		last_write.key_len != k->key_len ||
		last_write.scope_len != k->scope_len ||
		memcmp(last_write.key, k->key, k->key_len) != 0 ||
		memcmp(last_write.scope, k->scope, k->scope_len) != 0)
		return false;

	snapshot = RegisterSnapshot(GetLatestSnapshot());
	found = table_tuple_fetch_row_version(rel, &last_write.tid, snapshot, slot);
	UnregisterSnapshot(snapshot);
	if (found)
	{
		slot_getallattrs(slot);
		found = tuple_is_of(slot, k);
	}
	if (!found)
		ExecClearTuple(slot);
	return found;
}

/*
 * Opens a write of k's record; read: read the record first (w->found).
 * what names the write when the transaction is read-only.
 */
static void
write_begin(RecordWrite *w, const IdemKey *k, const char *what, bool read)
{
	memset(w, 0, sizeof(RecordWrite));
	w->t = local_table(k);
	w->k = k;
	w->direct = w->t->direct_writes;
	w->callercxt = CurrentMemoryContext;

	if (w->direct)
	{
		/* the executor checks this for the writes it runs */
		PreventCommandIfReadOnly(what);
		w->rel = table_open(w->t->relid, RowExclusiveLock);
		w->idx = index_open(w->t->pkey_relid, RowExclusiveLock);
		if (!read)
			return;
		w->slot = table_slot_create(w->rel, NULL);
		w->found = fetch_last_write(w->rel, k, w->slot) ||
			fetch_hinted(w->rel, k, w->slot) ||
			probe(w->rel, w->idx, k, w->slot);
		w->old_values = w->slot->tts_values;
		w->old_nulls = w->slot->tts_isnull;
		return;
	}

	idem_storage_begin(&w->call);
	if (read)
	{
		Datum		values[2];

		values[0] = text_datum(k->scope, k->scope_len);
		values[1] = text_datum(k->key, k->key_len);
		run(w->t, Q_READ, values, NULL, true, SPI_OK_SELECT);
		if (SPI_processed > 0)
		{
			TupleDesc	desc = SPI_tuptable->tupdesc;

			w->old_values = palloc(sizeof(Datum) * desc->natts);
			w->old_nulls = palloc(sizeof(bool) * desc->natts);
			heap_deform_tuple(SPI_tuptable->vals[0], desc, w->old_values,
							  w->old_nulls);
			w->found = true;
		}
	}
}

static void
write_end(RecordWrite *w)
{
	if (!w->direct)
	{
		idem_storage_end(&w->call);
		return;
	}
	if (w->slot != NULL)
		ExecDropSingleTupleTableSlot(w->slot);

	/*
	 * A transaction that wrote keeps its lock to its end, as the executor's
	 * writes do (and fetch_last_write relies on); one that only read gives
	 * it back.
	 */
	index_close(w->idx, w->wrote ? NoLock : RowExclusiveLock);
	table_close(w->rel, w->wrote ? NoLock : RowExclusiveLock);
}

/*
 * The one helper that sets a column of a write.  The lease columns are
 * left out of a table of a version before 1.2, which has none.
 */
static void
set_field(RecordWrite *w, int attnum, Datum value, bool isnull)
{
	if (attnum > num_columns())
		return;
	w->values[attnum - 1] = isnull ? (Datum) 0 : value;
	w->nulls[attnum - 1] = isnull;
	w->set[attnum - 1] = true;
}

static inline void
set_text(RecordWrite *w, int attnum, const char *s)
{
	set_field(w, attnum, s ? CStringGetTextDatum(s) : (Datum) 0, s == NULL);
}

/* A column of the record as it is (the caller knows it was found) */
static inline bool
old_null(const RecordWrite *w, int attnum)
{
	return w->old_nulls[attnum - 1];
}

static inline Datum
old_value(const RecordWrite *w, int attnum)
{
	return w->old_values[attnum - 1];
}

static char *
old_text(const RecordWrite *w, int attnum)
{
	return old_null(w, attnum) ? NULL :
		TextDatumGetCString(old_value(w, attnum));
}

/* The one place where deadlines are computed: now + an interval */
static TimestampTz
deadline(TimestampTz now, const Interval *iv)
{
	return idem_add_interval(now, iv);
}

/*
 * The record as the write leaves it, copied into the caller's memory
 * context.
 */
static void
write_result(RecordWrite *w, IdemRecord *rec)
{
	Datum		v[NUM_KEY_COLUMNS];
	bool		n[NUM_KEY_COLUMNS];
	MemoryContext oldcxt;

	memset(n, true, sizeof(n));
	for (int i = 0; i < num_columns(); i++)
	{
		if (w->set[i] || !w->found)
		{
			v[i] = w->values[i];
			n[i] = !w->set[i] || w->nulls[i];
		}
		else
		{
			v[i] = w->old_values[i];
			n[i] = w->old_nulls[i];
		}
	}
	memset(rec, 0, sizeof(IdemRecord));
	oldcxt = MemoryContextSwitchTo(w->callercxt);
	fill_record(v, n, rec);
	MemoryContextSwitchTo(oldcxt);
}

/*
 * The kept plan of a write through SPI: kind and the columns it sets make
 * the query (see write_query).
 */
static SPIPlanPtr
write_plan(RecordWrite *w, WriteKind kind, int *nparams, int *params)
{
	KeyTable   *t = w->t;
	uint32		mask = 0;
	int			n = 0;
	int			slot;

	/* parameters: scope and key first, then the columns set */
	params[n++] = Anum_scope;
	params[n++] = Anum_key;
	for (int i = 0; i < NUM_KEY_COLUMNS; i++)
	{
		if (!w->set[i] || i + 1 == Anum_scope || i + 1 == Anum_key)
			continue;
		mask |= (uint32) 1 << i;
		params[n++] = i + 1;
	}
	*nparams = n;

	for (slot = 0; slot < t->nwrites; slot++)
	{
		if (t->writes[slot].kind == kind && t->writes[slot].mask == mask)
			return t->writes[slot].plan;
	}
	if (slot == MAX_WRITE_PLANS)
		elog(ERROR, "too many kinds of writes to the key table");
	t->writes[slot].kind = kind;
	t->writes[slot].mask = mask;
	t->writes[slot].plan = write_query(t, kind, n, params);
	t->nwrites++;
	return t->writes[slot].plan;
}

/* Runs the write through SPI; returns whether it hit one row */
static bool
write_by_query(RecordWrite *w, WriteKind kind, int expected)
{
	int			params[NUM_KEY_COLUMNS];
	int			nparams;
	SPIPlanPtr	plan = write_plan(w, kind, &nparams, params);
	Datum		values[NUM_KEY_COLUMNS];
	char		nulls[NUM_KEY_COLUMNS];

	if (kind == WRITE_DELETE)
		nparams = 2;
	values[0] = text_datum(w->k->scope, w->k->scope_len);
	values[1] = text_datum(w->k->key, w->k->key_len);
	nulls[0] = nulls[1] = ' ';
	for (int i = 2; i < nparams; i++)
	{
		values[i] = w->values[params[i] - 1];
		nulls[i] = w->nulls[params[i] - 1] ? 'n' : ' ';
	}
	run_plan(plan, values, nulls, false, expected);
	return SPI_processed == 1;
}

/*
 * Replaces (newtup) or deletes (newtup NULL) the probed tuple, as the
 * executor would: waiting for a concurrent writer, and under REPEATABLE
 * READ and SERIALIZABLE raising a serialization failure when the tuple
 * is not the one the transaction sees.  Returns false when it is gone (a
 * purge deleted it).
 */
static bool
change_tuple(RecordWrite *w, ItemPointer tid, HeapTuple newtup)
{
	Snapshot	crosscheck = InvalidSnapshot;
	TM_Result	result;
	TM_FailureData tmfd;
	LockTupleMode lockmode;

	w->wrote = true;
	if (IsolationUsesXactSnapshot())
		crosscheck = GetTransactionSnapshot();
	if (newtup != NULL)
		result = heap_update(w->rel, tid, newtup, GetCurrentCommandId(true),
							 crosscheck, true, &tmfd, &lockmode);
	else
		result = heap_delete(w->rel, tid, GetCurrentCommandId(true),
							 crosscheck, true, &tmfd, false);
	switch (result)
	{
		case TM_Ok:
			return true;
		case TM_Updated:
		case TM_Deleted:
			if (IsolationUsesXactSnapshot())
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("could not serialize access due to concurrent %s",
								result == TM_Updated ? "update" : "delete")));
			return false;
		default:
			elog(ERROR, "unexpected result %d of a write to the key table",
				 (int) result);
	}
	return false;				/* keep compiler quiet */
}

/*
 * Inserts the record the write has set (the columns it did not set are
 * null).  Returns false when a record of the key exists already.
 */
static bool
write_insert(RecordWrite *w)
{
	Datum		values[NUM_KEY_COLUMNS];
	bool		nulls[NUM_KEY_COLUMNS];
	HeapTuple	tuple;
	bool		inserted;

	if (!w->direct)
		return write_by_query(w, WRITE_INSERT, SPI_OK_INSERT);

	for (int i = 0; i < NUM_KEY_COLUMNS; i++)
	{
		values[i] = w->values[i];
		nulls[i] = !w->set[i] || w->nulls[i];
	}
	tuple = heap_form_tuple(RelationGetDescr(w->rel), values, nulls);
	simple_heap_insert(w->rel, tuple);
	w->wrote = true;

	/*
	 * A record created between the caller's read and its lock shows up as
	 * a duplicate in the primary key: then take the new tuple back (the
	 * index entry left behind points to a dead tuple) and let the caller
	 * read again.  Checking here rather than probing first saves a descent
	 * of the index on every new key.
	 */
	inserted = index_tuple(w->rel, w->idx, tuple, UNIQUE_CHECK_PARTIAL, false);
	CommandCounterIncrement();
	if (!inserted)
	{
		/* the insert must be visible to its own delete */
		simple_heap_delete(w->rel, &tuple->t_self);
		CommandCounterIncrement();
	}
	else
	{
		remember_write(w->rel, w->k, &tuple->t_self);
		idem_hint_set(w->rel, w->k, &tuple->t_self, true);
	}
	heap_freetuple(tuple);
	return inserted;
}

/*
 * Changes the columns the write has set in the record it read.  Returns
 * false when the record is gone.
 */
static bool
write_update(RecordWrite *w)
{
	HeapTuple	oldtup;
	HeapTuple	newtup;
	bool		done;

	Assert(w->found);
	if (!w->direct)
		return write_by_query(w, WRITE_UPDATE, SPI_OK_UPDATE);

	oldtup = ExecCopySlotHeapTuple(w->slot);
	newtup = heap_modify_tuple(oldtup, RelationGetDescr(w->rel),
							   w->values, w->nulls, w->set);
	ExecClearTuple(w->slot);
	done = change_tuple(w, &oldtup->t_self, newtup);
	if (done && !HeapTupleIsHeapOnly(newtup))
	{
		/* a chain of its own, which the hint follows */
		(void) index_tuple(w->rel, w->idx, newtup, UNIQUE_CHECK_YES, true);
		idem_hint_set(w->rel, w->k, &newtup->t_self, true);
	}
	if (done)
		remember_write(w->rel, w->k, &newtup->t_self);
	heap_freetuple(newtup);
	heap_freetuple(oldtup);
	CommandCounterIncrement();
	return done;
}

/*
 * Deletes the record the write read.  Returns false when it is gone.
 */
static bool
write_delete(RecordWrite *w)
{
	bool		done;

	Assert(w->found);
	if (!w->direct)
		return write_by_query(w, WRITE_DELETE, SPI_OK_DELETE);

	done = change_tuple(w, &w->slot->tts_tid, NULL);
	ExecClearTuple(w->slot);
	CommandCounterIncrement();
	return done;
}

/*
 * Sets the owner columns of a new or renewed in-flight record: a session
 * owner is this backend, a lease owner its token and lease, which ends at
 * now + its length (owner->lease_expires_at is set).
 */
static void
set_owner(RecordWrite *w, IdemOwner *owner, TimestampTz now)
{
	bool		session = !owner->lease;

	set_field(w, Anum_owner_pid, Int32GetDatum(MyProcPid), !session);
	set_field(w, Anum_owner_started, TimestampTzGetDatum(MyStartTimestamp),
			  !session);
	set_text(w, Anum_owner_token, owner->token);
	if (owner->lease)
		owner->lease_expires_at = deadline(now, &owner->lease_len);
	set_field(w, Anum_lease, IntervalPGetDatum(&owner->lease_len), session);
	set_field(w, Anum_lease_expires_at,
			  TimestampTzGetDatum(owner->lease_expires_at), session);
}

/*
 * Sets the columns of an in-flight reservation made now.
 */
static void
set_reservation(RecordWrite *w, const char *request_hash, int32 attempt,
				const Interval *ttl, TimestampTz now, IdemOwner *owner)
{
	set_field(w, Anum_scope, text_datum(w->k->scope, w->k->scope_len), false);
	set_field(w, Anum_key, text_datum(w->k->key, w->k->key_len), false);
	set_text(w, Anum_state, "in_flight");
	set_text(w, Anum_request_hash, request_hash);
	set_field(w, Anum_attempt, Int32GetDatum(attempt), false);
	set_field(w, Anum_ttl, IntervalPGetDatum(ttl), false);
	set_field(w, Anum_created_at, TimestampTzGetDatum(now), false);
	set_field(w, Anum_expires_at, TimestampTzGetDatum(deadline(now, ttl)),
			  false);
	set_owner(w, owner, now);
}

/*
 * Inserts a new in-flight record for owner; rec is filled with it.
 * Returns false when a record of k exists already.  The caller holds k's
 * lock.
 */
bool
idem_storage_insert(const IdemKey *k, const char *request_hash,
					const Interval *ttl, TimestampTz now, IdemOwner *owner,
					IdemRecord *rec)
{
	RecordWrite w;
	bool		inserted;

	write_begin(&w, k, "idem_reserve", false);
	set_reservation(&w, request_hash, 1, ttl, now, owner);
	inserted = write_insert(&w);
	if (inserted)
		write_result(&w, rec);
	write_end(&w);
	return inserted;
}

/* Most lease owners that takeovers replaced kept in fenced_tokens */
#define FENCED_KEPT 8

/*
 * The fenced tokens of a renewed record: a takeover (attempt > 1) fences
 * the lease owner it replaces, keeping the last FENCED_KEPT of them; a new
 * start (attempt 1) forgets them all; the new owner is never fenced.  As
 * array_remove(CASE ... END, new_token) would: an empty array stays an
 * empty array, none stays none.
 */
static void
set_fenced(RecordWrite *w, int32 attempt, const char *new_token)
{
	bool		replaced = !old_null(w, Anum_lease_expires_at) &&
		!old_null(w, Anum_owner_token);
	Datum	   *elems = NULL;
	bool	   *enulls = NULL;
	int			nelems = 0;
	int			first = 0;
	Datum	   *kept;
	bool	   *kept_nulls;
	int			nkept = 0;
	bool		any_null = false;
	int			dims[1];
	int			lbs[1] = {1};

	if (attempt == 1 || (!replaced && old_null(w, Anum_fenced_tokens)))
	{
		set_field(w, Anum_fenced_tokens, (Datum) 0, true);
		return;
	}
	if (!old_null(w, Anum_fenced_tokens))
		deconstruct_array(DatumGetArrayTypeP(old_value(w, Anum_fenced_tokens)),
						  TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, &enulls, &nelems);
	if (replaced)
		first = Max(0, nelems + 1 - FENCED_KEPT);
	kept = palloc(sizeof(Datum) * (nelems + 1));
	kept_nulls = palloc(sizeof(bool) * (nelems + 1));
	for (int i = first; i < nelems + (replaced ? 1 : 0); i++)
	{
		Datum		d = i < nelems ? elems[i] : old_value(w, Anum_owner_token);
		bool		isnull = i < nelems && enulls[i];

		/* array_remove: a NULL new_token takes out the NULLs */
		if (new_token == NULL ? isnull :
			(!isnull && strcmp(TextDatumGetCString(d), new_token) == 0))
			continue;
		kept[nkept] = d;
		kept_nulls[nkept++] = isnull;
		any_null |= isnull;
	}
	dims[0] = nkept;
	set_field(w, Anum_fenced_tokens, PointerGetDatum(nkept == 0 ?
													 construct_empty_array(TEXTOID) :
													 construct_md_array(kept, any_null ? kept_nulls : NULL,
																		1, dims, lbs, TEXTOID,
																		-1, false, TYPALIGN_INT)),
			  false);
}

/*
 * Makes k's existing record a new in-flight reservation of owner, rec
 * filled with it: an expired record starts over, a gone owner's one is
 * taken over.  Returns false when the record is gone (a concurrent purge
 * deleted it).  The caller holds k's lock.
 */
bool
idem_storage_renew(const IdemKey *k, const char *request_hash, int32 attempt,
				   const Interval *ttl, TimestampTz now, IdemOwner *owner,
				   IdemRecord *rec)
{
	RecordWrite w;
	bool		done = false;

	write_begin(&w, k, "UPDATE", true);
	if (w.found)
	{
		set_reservation(&w, request_hash, attempt, ttl, now, owner);
		set_field(&w, Anum_status, (Datum) 0, true);
		set_field(&w, Anum_headers, (Datum) 0, true);
		set_field(&w, Anum_body, (Datum) 0, true);
		set_field(&w, Anum_committed_at, (Datum) 0, true);
		if (cache.has_leases)
			set_fenced(&w, attempt, owner->token);
		/* before the old tuple goes */
		write_result(&w, rec);
		done = write_update(&w);
	}
	write_end(&w);
	return done;
}

static bool
text_equals(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == NULL && b == NULL;
	return strcmp(a, b) == 0;
}

/*
 * Is the record w read in flight and owned by the caller (a lease owner by
 * its token; a session owner is this session, with the same token or none
 * on both sides), with a request hash that agrees?  *was_lease tells a
 * lease owner's record.
 */
static bool
commit_is_mine(RecordWrite *w, const char *request_hash, const char *token,
			   TimestampTz now, bool *was_lease)
{
	char	   *stored_hash;
	bool		mine;

	if (cache.has_leases && !old_null(w, Anum_lease_expires_at))
	{
		/* a lease that ran out, past the ttl too: the record is absent */
		*was_lease = true;
		mine = token != NULL &&
			text_equals(old_text(w, Anum_owner_token), token) &&
			(idem_lease_alive(DatumGetTimestampTz(old_value(w, Anum_lease_expires_at))) ||
			 DatumGetTimestampTz(old_value(w, Anum_expires_at)) > now);
	}
	else
		mine = !old_null(w, Anum_owner_pid) && !old_null(w, Anum_owner_started) &&
			idem_owner_is_me(DatumGetInt32(old_value(w, Anum_owner_pid)),
							 DatumGetTimestampTz(old_value(w, Anum_owner_started))) &&
			(cache.has_leases ?
			 text_equals(old_text(w, Anum_owner_token), token) :
			 token == NULL);
	if (!mine || strcmp(old_text(w, Anum_state), "in_flight") != 0)
		return false;
	stored_hash = old_text(w, Anum_request_hash);
	return request_hash == NULL || stored_hash == NULL ||
		strcmp(stored_hash, request_hash) == 0;
}

/*
 * Stores the response on k's in-flight record.  mine: only if the caller
 * owns it and the hashes agree (commit_is_mine), else whoever owned it.
 * Returns false when there was no such record to update.  The caller
 * holds k's lock.
 */
static bool
commit_record(const IdemKey *k, const char *request_hash, const char *token,
			  bool status_null, int32 status, Jsonb *headers, bytea *body,
			  TimestampTz now, bool mine, bool *was_lease)
{
	RecordWrite w;
	bool		done = false;
	char	   *stored_hash;
	char	   *stored_token;

	write_begin(&w, k, mine ? "idem_commit" : "UPDATE", true);
	if (w.found &&
		(mine ? commit_is_mine(&w, request_hash, token, now, was_lease) :
		 strcmp(old_text(&w, Anum_state), "in_flight") == 0))
	{
		stored_hash = old_text(&w, Anum_request_hash);
		stored_token = cache.has_leases ? old_text(&w, Anum_owner_token) : NULL;
		set_text(&w, Anum_state, "committed");
		set_text(&w, Anum_request_hash, stored_hash ? stored_hash : request_hash);
		set_field(&w, Anum_status, Int32GetDatum(status), status_null);
		set_field(&w, Anum_headers, PointerGetDatum(headers), headers == NULL);
		set_field(&w, Anum_body, PointerGetDatum(body), body == NULL);
		set_field(&w, Anum_committed_at, TimestampTzGetDatum(now), false);
		set_field(&w, Anum_expires_at,
				  TimestampTzGetDatum(deadline(now, DatumGetIntervalP(old_value(&w, Anum_ttl)))),
				  false);
		set_field(&w, Anum_owner_pid, (Datum) 0, true);
		set_field(&w, Anum_owner_started, (Datum) 0, true);
		set_text(&w, Anum_owner_token, token ? token : stored_token);
		set_field(&w, Anum_lease, (Datum) 0, true);
		set_field(&w, Anum_lease_expires_at, (Datum) 0, true);
		done = write_update(&w);
	}
	write_end(&w);
	return done;
}

/*
 * Stores the response on k's in-flight record, whoever owned it.  Returns
 * false when there was no in-flight record to update.
 */
bool
idem_storage_commit(const IdemKey *k, const char *request_hash,
					const char *token, bool status_null, int32 status,
					Jsonb *headers, bytea *body, TimestampTz now)
{
	return commit_record(k, request_hash, token, status_null, status,
						 headers, body, now, false, NULL);
}

/*
 * The common commit, in one probe: the record is in flight, the caller
 * owns it, and the hashes agree.  Returns false when any of that does not
 * hold, for the caller to find out why, and always for a table not written
 * directly (its commits take the caller's general path).  The caller holds
 * k's lock.  *was_lease tells a committed lease owner.
 */
bool
idem_storage_commit_mine(const IdemKey *k, const char *request_hash,
						 const char *token, bool status_null, int32 status,
						 Jsonb *headers, bytea *body, TimestampTz now,
						 bool *was_lease)
{
	*was_lease = false;
	if (!local_table(k)->direct_writes)
		return false;
	return commit_record(k, request_hash, token, status_null, status,
						 headers, body, now, true, was_lease);
}

/*
 * Renews the lease of owner's in-flight record, to now + owner->lease_len
 * (owner->lease_expires_at is set).  Returns false when the record is not
 * the owner's lease (any more).  The caller holds k's lock.
 */
bool
idem_storage_extend(const IdemKey *k, IdemOwner *owner, TimestampTz now)
{
	RecordWrite w;
	bool		done = false;

	Assert(owner->lease && owner->token != NULL);
	write_begin(&w, k, "UPDATE", true);
	if (w.found &&
		strcmp(old_text(&w, Anum_state), "in_flight") == 0 &&
		!old_null(&w, Anum_lease_expires_at) &&
		text_equals(old_text(&w, Anum_owner_token), owner->token))
	{
		owner->lease_expires_at = deadline(now, &owner->lease_len);
		set_field(&w, Anum_lease, IntervalPGetDatum(&owner->lease_len), false);
		set_field(&w, Anum_lease_expires_at,
				  TimestampTzGetDatum(owner->lease_expires_at), false);
		done = write_update(&w);
	}
	write_end(&w);
	return done;
}

/* Deletes k's record if it is in the state given; returns whether it was */
static bool
delete_record(const IdemKey *k, const char *state)
{
	RecordWrite w;
	bool		done = false;

	write_begin(&w, k, "DELETE", true);
	if (w.found && strcmp(old_text(&w, Anum_state), state) == 0)
		done = write_delete(&w);
	write_end(&w);
	return done;
}

/*
 * Deletes the in-flight record of k.  Returns whether there was one.
 */
bool
idem_storage_delete(const IdemKey *k)
{
	return delete_record(k, "in_flight");
}

/*
 * Deletes the committed record of k.  Returns whether there was one.
 */
bool
idem_storage_evict(const IdemKey *k)
{
	return delete_record(k, "committed");
}

/*
 * Marks this session's in-flight record of k as having no owner.
 */
void
idem_storage_abandon(const IdemKey *k)
{
	RecordWrite w;

	write_begin(&w, k, "UPDATE", true);
	if (w.found &&
		strcmp(old_text(&w, Anum_state), "in_flight") == 0 &&
		!old_null(&w, Anum_owner_pid) && !old_null(&w, Anum_owner_started) &&
		idem_owner_is_me(DatumGetInt32(old_value(&w, Anum_owner_pid)),
						 DatumGetTimestampTz(old_value(&w, Anum_owner_started))))
	{
		set_field(&w, Anum_owner_pid, (Datum) 0, true);
		set_field(&w, Anum_owner_started, (Datum) 0, true);
		(void) write_update(&w);
	}
	write_end(&w);
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
 * and that no one else has locked (one renewed meanwhile has a new ctid and
 * a new expiry, and one being renewed is locked: both are left alone).
 * Returns how many went.  Inside idem_storage_begin/end.
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
