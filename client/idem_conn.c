/*-------------------------------------------------------------------------
 *
 * idem_conn.c
 *	  Connection handles, owner tokens and leases, running statements, and
 *	  the calls (reserve, commit, release, extend, get, purge).  A handle's
 *	  errors are set in idem_error.c, the rows decoded in idem_decode.c.
 *
 * Each call is one round trip: the statement is prepared the first time it
 * is used on a connection, then run with PQexecPrepared, results in binary
 * (the body comes back as raw bytes, no hex decoding).  A runner in a
 * transaction block of its own (idem_set_transaction) sends its BEGIN with
 * the reserve and its COMMIT with the commit, in pipeline mode: still one
 * round trip each.  BEGIN and COMMIT are prepared statements too: sent
 * unnamed, each is parsed and analysed again, which costs the server two
 * thirds more than running it prepared.  A statement that vanished
 * (DISCARD ALL by a pooler, a reset of a wrapped PGconn) is prepared again
 * and the call retried, when no transaction is open (or only the one its
 * own BEGIN opened).
 *
 * The first call on a connection probes the server once (probe()): the
 * extension's version (1.2 and later take owner and lease arguments, older
 * ones get the old statements), whether a proxy sits in between (libpq's
 * backend PID is not the server's pg_backend_pid(): PgBouncer makes one
 * up), and the settings idem.wait_timeout and idem.lease.  Behind a proxy
 * the statements are sent unnamed (PQexecParams): in a transaction pooler
 * a named statement prepared in one transaction is gone in the next.  On a
 * direct connection named statements stay, since parsing each call again
 * costs some 15% of a reserve and commit.
 *
 *-------------------------------------------------------------------------
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>
#include <openssl/rand.h>

#include "idem_int.h"

/*
 * Statement names carry the library's major version, so that two versions
 * of the library sharing a wrapped connection do not run each other's SQL;
 * the forms with owners have names of their own, and a statement whose
 * result changes shape gets a new name (reserve2, get2: one composite
 * column instead of the record's columns).  Form 0 is for extension
 * 1.0 and 1.1, form 1 for 1.2 and later.
 */
static const char *const stmt_name[2][IDEM_NSTMTS] = {
	{
		"libidem1_reserve",
		"libidem1_commit",
		"libidem1_release",
		"libidem1_get",
		"libidem1_purge",
		NULL,
		NULL,
		"libidem1_begin",
		"libidem1_end",
	},
	{
		"libidem1_owner_reserve2",
		"libidem1_owner_commit",
		"libidem1_owner_release",
		"libidem1_owner_get2",
		"libidem1_purge",
		"libidem1_owner_extend",
		"libidem1_owner_reserve_in_block2",
		"libidem1_begin",
		"libidem1_end",
	},
};

/*
 * The stored headers come as they are stored (jsonb, sent as a version
 * byte and its text) and are read by the library (idem_decode.c, with
 * json-c): a replay costs the server nothing beyond the record's columns.
 */
#define RECORD_COLUMNS \
	"r.fresh, r.state, r.status, r.headers, r.body, r.attempt, " \
	"r.created_at, r.expires_at"

/*
 * From 1.2 on, the reserve and the get ask for the function's value alone,
 * one idem_reservation in its binary form (idem_decode.c): the executor
 * calls the function from the target list instead of setting up a
 * function scan and its tuplestore, which cost a replay more than
 * idem_reserve itself (bench/results/profile.md).  Beside it, the
 * server's now(), from which the library has the lease's remaining length
 * by the server's clock, for waiters and for the renewal of a lease taken
 * in autocommit.  Inside a transaction block a reservation is not renewed
 * (see idem_run.c), so the reserve made there (RESERVE_IN_BLOCK) asks for
 * the value alone.
 */
#define RESERVATION " AS reservation"
#define WITH_NOW RESERVATION ", pg_catalog.now() AS server_now"

/*
 * The statements' text, each with one %s where the extension's schema
 * goes (quoted, followed by a dot): the calls do not depend on the
 * session's search_path.
 */
static const char *const stmt_sql[2][IDEM_NSTMTS] = {
	{
		"SELECT " RECORD_COLUMNS " FROM %sidem_reserve($1::text, "
		"$2::text, $3::interval, $4::interval, $5::text) r",
		"SELECT %sidem_commit($1::text, $2::text, $3::integer, $4::bytea, "
		"$5::jsonb, $6::text)",
		"SELECT %sidem_release($1::text, $2::text)",
		"SELECT " RECORD_COLUMNS " FROM %sidem_get($1::text, $2::text) r",
		"SELECT %sidem_purge($1::integer)",
		NULL,
		NULL,
		"BEGIN",
		"COMMIT",
	},
	{
		"SELECT %sidem_reserve($1::text, $2::text, $3::interval, "
		"$4::interval, $5::text, $6::text, $7::interval)" WITH_NOW,
		"SELECT %sidem_commit($1::text, $2::text, $3::integer, $4::bytea, "
		"$5::jsonb, $6::text, $7::text)",
		"SELECT %sidem_release($1::text, $2::text, $3::text)",
		"SELECT %sidem_get($1::text, $2::text)" WITH_NOW,
		"SELECT %sidem_purge($1::integer)",
		"SELECT %sidem_extend($1::text, $2::text, $3::interval, $4::text)",
		"SELECT %sidem_reserve($1::text, $2::text, $3::interval, "
		"$4::interval, $5::text, $6::text, $7::interval)" RESERVATION,
		"BEGIN",
		"COMMIT",
	},
};

/* the server settings, read once the module is loaded (hence the call) */
#define PROBE_SQL \
	"SELECT pg_catalog.pg_backend_pid(), e.extversion, " \
	"pg_catalog.quote_ident(n.nspname) " \
	"FROM (SELECT) AS one " \
	"LEFT JOIN pg_catalog.pg_extension e ON e.extname = 'idempotency' " \
	"LEFT JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace"
#define SETTINGS_SQL \
	"SELECT %sidem_derive_key('libidem'), " \
	"(extract(epoch FROM current_setting('idem.wait_timeout', true)" \
	"::interval) * 1000)::int8, " \
	"(extract(epoch FROM current_setting('idem.lease', true)" \
	"::interval) * 1000)::int8"
#define INTERVAL_MS_SQL \
	"SELECT (extract(epoch FROM $1::interval) * 1000)::int8"

/* ---- version and names ------------------------------------------------- */

int
idem_version(void)
{
	return IDEM_VERSION_MAJOR * 10000 + IDEM_VERSION_MINOR * 100 +
		IDEM_VERSION_PATCH;
}



/* ---- observing --------------------------------------------------------- */

int
idem_set_observer(idem_conn *conn, idem_observer_fn observer, void *arg)
{
	if (conn == NULL)
		return -1;
	conn->observer = observer;
	conn->observer_arg = observer ? arg : NULL;
	return 0;
}

const char *
idem_op_name(idem_op op)
{
	switch (op)
	{
		case IDEM_OP_RESERVE:
			return "reserve";
		case IDEM_OP_COMMIT:
			return "commit";
		case IDEM_OP_RELEASE:
			return "release";
		case IDEM_OP_GET:
			return "get";
		case IDEM_OP_EXTEND:
			return "extend";
		case IDEM_OP_PURGE:
			return "purge";
		case IDEM_OP_RUN:
			return "run";
		case IDEM_OP_STEP:
			return "step";
		case IDEM_OP_HTTP_RUN:
			return "http_run";
	}
	return "unknown";
}

static int64_t
clock_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void
idem__call_begin(idem_call *call)
{
	memset(call, 0, sizeof(*call));
	call->started_us = clock_us();
}

/* a record's state as a static string, so that the event outlives it */
static const char *
static_state(const char *state)
{
	static const char *const states[] = {
		"committed", "in_flight", "released", "bypassed"
	};
	size_t		i;

	if (state == NULL)
		return NULL;
	for (i = 0; i < sizeof(states) / sizeof(states[0]); i++)
		if (strcmp(state, states[i]) == 0)
			return states[i];
	return "unknown";
}

/* what the record a call returns tells its event */
void
idem__call_record(idem_call *call, const idem_record *rec)
{
	if (rec == NULL)
		return;
	call->attempt = rec->attempt;
	call->status = rec->status > 0 ? rec->status : 0;
	call->state = static_state(rec->state);
	if (rec->fresh && rec->lease_expires_at != 0)
		call->leased = 1;
}

/* Reports a call that has ended to the handle's observer, if any. */
void
idem__call_end(idem_conn *conn, const idem_call *call, idem_op op,
			   idem_outcome outcome, const char *key, const char *scope)
{
	idem_event	ev;

	if (conn->observer == NULL)
		return;
	memset(&ev, 0, sizeof(ev));
	ev.op = op;
	ev.outcome = outcome;
	ev.error = conn->err;
	ev.sqlstate = conn->sqlstate;
	ev.message = conn->errmsg;
	ev.key = key;
	ev.scope = op == IDEM_OP_PURGE ? NULL : scope ? scope : "";
	ev.attempt = call->attempt;
	ev.waited = call->waited;
	ev.leased = call->leased;
	ev.duration_us = clock_us() - call->started_us;
	ev.status = call->status;
	ev.count = call->count;
	ev.state = call->state;
	conn->observer(&ev, conn->observer_arg);
}

/* ---- connections ------------------------------------------------------- */

/* a new owner token: IDEM_OWNER_BYTES random bytes as lowercase hex */
static int
make_token(char out[2 * IDEM_OWNER_BYTES + 1])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char raw[IDEM_OWNER_BYTES];
	int			i;

	if (RAND_bytes(raw, (int) sizeof(raw)) != 1)
		return -1;
	for (i = 0; i < IDEM_OWNER_BYTES; i++)
	{
		out[2 * i] = hex[raw[i] >> 4];
		out[2 * i + 1] = hex[raw[i] & 15];
	}
	out[2 * IDEM_OWNER_BYTES] = '\0';
	return 0;
}

idem_conn *
idem__conn_new(PGconn *pg, int owned)
{
	idem_conn  *conn = calloc(1, sizeof(idem_conn));

	if (conn == NULL)
		return NULL;
	if (make_token(conn->owner) < 0)
	{
		free(conn);
		return NULL;
	}
	conn->pg = pg;
	conn->owned = owned;
	idem__clear_error(conn);
	return conn;
}

/* Forgets what probe() learnt and the statements prepared. */
void
idem__forget_session(idem_conn *conn)
{
	int			i;

	for (i = 0; i < IDEM_NSTMTS; i++)
		free(conn->sess.sql[i]);
	memset(&conn->sess, 0, sizeof(conn->sess));
	conn->prepared = 0;
}

static void
check_connection(idem_conn *conn)
{
	idem__clear_error(conn);
	if (conn->pg == NULL)
		idem__set_error(conn, IDEM_ERR_NOMEM, "out of memory");
	else if (PQstatus(conn->pg) != CONNECTION_OK)
	{
		idem__set_error(conn, IDEM_ERR_CONNECTION, "%s", "");
		idem__set_client_message(conn, PQerrorMessage(conn->pg));
		if (conn->errmsg[0] == '\0')
			snprintf(conn->errmsg, sizeof(conn->errmsg),
					 "not connected to the server");
	}
}

idem_conn *
idem_connect(const char *conninfo)
{
	/*
	 * conninfo as libpq's dbname with expand_dbname: a connection string or
	 * URI is expanded, a bare word is a database name, NULL or "" leaves
	 * everything to the environment.
	 */
	const char *const keywords[] = {"dbname", "fallback_application_name", NULL};
	const char *const values[] = {conninfo ? conninfo : "", "libidem", NULL};
	PGconn	   *pg = PQconnectdbParams(keywords, values, 1);
	idem_conn  *conn;

	conn = idem__conn_new(pg, 1);
	if (conn == NULL)
	{
		PQfinish(pg);
		return NULL;
	}
	check_connection(conn);
	return conn;
}

idem_conn *
idem_wrap(struct pg_conn *pg)
{
	if (pg == NULL)
		return NULL;
	return idem__conn_new(pg, 0);
}

void
idem_free(idem_conn *conn)
{
	if (conn == NULL)
		return;
	if (conn->owned && conn->pg)
		PQfinish(conn->pg);
	idem__forget_session(conn);
	idem__renewer_free(conn->renewer);
	free(conn->lease);
	free(conn->wait_text);
	free(conn->run_id);
	free(conn);
}

int
idem_connected(const idem_conn *conn)
{
	return conn && conn->pg && PQstatus(conn->pg) == CONNECTION_OK;
}

int
idem_reconnect(idem_conn *conn)
{
	idem__clear_error(conn);
	if (!conn->owned)
	{
		idem__set_error(conn, IDEM_ERR_NOT_OWNER,
						"cannot reconnect a wrapped connection: the "
						"application owns it (use PQreset)");
		return -1;
	}
	PQreset(conn->pg);
	idem__forget_session(conn);
	check_connection(conn);
	return conn->err == IDEM_OK ? 0 : -1;
}

struct pg_conn *
idem_pgconn(const idem_conn *conn)
{
	return conn ? conn->pg : NULL;
}

/* ---- running statements ------------------------------------------------ */

/* the form of the statements on this connection: 1 with owners */
#define FORM(conn) ((conn)->sess.owners ? 1 : 0)
#define PREPARED_BIT(form, stmt) (1u << ((form) * IDEM_NSTMTS + (int) (stmt)))

static int
has_sqlstate(const PGresult *res, const char *state)
{
	const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

	return s != NULL && strcmp(s, state) == 0;
}

static int
prepare(idem_conn *conn, int form, idem_stmt stmt)
{
	PGresult   *res;

	if (conn->prepared & PREPARED_BIT(form, stmt))
		return 0;
	res = PQprepare(conn->pg, stmt_name[form][stmt], conn->sess.sql[stmt],
					0, NULL);
	if (res && PQresultStatus(res) == PGRES_COMMAND_OK)
	{
		PQclear(res);
		conn->prepared |= PREPARED_BIT(form, stmt);
		return 0;
	}
	/* another handle on the same wrapped connection prepared it already */
	if (has_sqlstate(res, "42P05"))
	{
		PQclear(res);
		conn->prepared |= PREPARED_BIT(form, stmt);
		return 0;
	}
	idem__set_error_from_result(conn, res);
	PQclear(res);
	return -1;
}

/* the results of one round trip: BEGIN, the statement, COMMIT */
typedef struct round_trip
{
	PGresult   *before;
	PGresult   *stmt;
	PGresult   *after;
} round_trip;

/* sends the statement itself: 1 when sent */
static int
send_stmt(idem_conn *conn, int form, idem_stmt stmt, int nparams,
		  const char *const *values, const int *lengths, const int *formats)
{
	if (conn->sess.unnamed)
		return PQsendQueryParams(conn->pg, conn->sess.sql[stmt], nparams,
								 NULL, values, lengths, formats, 1);
	return PQsendQueryPrepared(conn->pg, stmt_name[form][stmt], nparams,
							   values, lengths, formats, 1);
}

#ifdef LIBPQ_HAS_PIPELINING

/*
 * Sends BEGIN (when begin), the statement and COMMIT (when commit) in
 * pipeline mode, then a sync: one round trip.  Reads every result up to
 * the sync and leaves pipeline mode, whatever failed, so that the
 * connection is as before for the caller's next statement.  The last
 * result of each query goes into rt (NULL when none came, e.g. the
 * connection was lost); a query skipped after an earlier error has a
 * PGRES_PIPELINE_ABORTED result.
 */
static void
pipeline(idem_conn *conn, int form, idem_stmt stmt, int nparams,
		 const char *const *values, const int *lengths, const int *formats,
		 int begin, int commit, round_trip *rt)
{
	PGconn	   *pg = conn->pg;
	PGresult  **slot[3];
	int			nq = 0;
	int			q = 0;
	int			nulls = 0;
	int			synced = 0;

	memset(rt, 0, sizeof(*rt));
	if (!PQenterPipelineMode(pg))
		return;
	if (begin)
	{
		if (!send_stmt(conn, form, IDEM_STMT_BEGIN, 0, NULL, NULL, NULL))
			goto out;
		slot[nq++] = &rt->before;
	}
	if (!send_stmt(conn, form, stmt, nparams, values, lengths, formats))
		goto out;
	slot[nq++] = &rt->stmt;
	if (commit)
	{
		if (!send_stmt(conn, form, IDEM_STMT_END, 0, NULL, NULL, NULL))
			goto out;
		slot[nq++] = &rt->after;
	}
	if (!PQpipelineSync(pg))
		goto out;
	synced = 1;

	/* each query's results end with a NULL; the sync's result ends all */
	for (;;)
	{
		PGresult   *res = PQgetResult(pg);

		if (res == NULL)
		{
			if (PQstatus(pg) == CONNECTION_BAD || ++nulls > nq + 1)
				break;
			q++;
			continue;
		}
		nulls = 0;
		if (PQresultStatus(res) == PGRES_PIPELINE_SYNC)
		{
			PQclear(res);
			break;
		}
		if (q < nq)
		{
			PQclear(*slot[q]);
			*slot[q] = res;
		}
		else
			PQclear(res);
	}
out:
	if (!PQexitPipelineMode(pg) && PQstatus(pg) == CONNECTION_OK)
	{
		/* a send failed halfway: end what was sent with a sync, drain it */
		if (!synced)
			PQpipelineSync(pg);
		for (nulls = 0; nulls <= nq + 1;)
		{
			PGresult   *res = PQgetResult(pg);
			ExecStatusType st;

			if (res == NULL)
			{
				if (PQstatus(pg) == CONNECTION_BAD)
					break;
				nulls++;
				continue;
			}
			st = PQresultStatus(res);
			PQclear(res);
			if (st == PGRES_PIPELINE_SYNC)
				break;
		}
		PQexitPipelineMode(pg);
	}
}

#else							/* !LIBPQ_HAS_PIPELINING */

/* the same without pipelines (libpq before 14): one round trip each */
static void
pipeline(idem_conn *conn, int form, idem_stmt stmt, int nparams,
		 const char *const *values, const int *lengths, const int *formats,
		 int begin, int commit, round_trip *rt)
{
	memset(rt, 0, sizeof(*rt));
	if (begin)
	{
		rt->before = PQexec(conn->pg, "BEGIN");
		if (PQresultStatus(rt->before) != PGRES_COMMAND_OK)
			return;
	}
	if (conn->sess.unnamed)
		rt->stmt = PQexecParams(conn->pg, conn->sess.sql[stmt], nparams,
								NULL, values, lengths, formats, 1);
	else
		rt->stmt = PQexecPrepared(conn->pg, stmt_name[form][stmt], nparams,
								  values, lengths, formats, 1);
	if (commit && PQresultStatus(rt->stmt) == PGRES_TUPLES_OK)
		rt->after = PQexec(conn->pg, "COMMIT");
}

#endif							/* LIBPQ_HAS_PIPELINING */

/*
 * Runs a statement with text parameters (the formats given, if any) and
 * binary results: prepared, or unnamed when the connection's statements do
 * not last.  Returns a PGRES_TUPLES_OK result with exactly one row, or
 * NULL with the error set on the handle.  The caller has probed the
 * connection (begin_call), so that the form is known.
 *
 * A runner in a transaction of its own (idem_set_transaction) asks for
 * BEGIN before the statement (conn->begin_next) or COMMIT after it
 * (conn->commit_next): they go in the same round trip, in a pipeline.
 * The statement fails when either does; a COMMIT that fails fails the
 * statement too, since what it did is gone.
 */
static PGresult *
exec_stmt(idem_conn *conn, idem_stmt stmt, int nparams,
		  const char *const *values, const int *lengths, const int *formats)
{
	int			form = FORM(conn);
	int			vanished = 0;
	int			begin = conn->begin_next;
	int			commit = conn->commit_next;
	round_trip	rt;
	PGresult   *res;

	conn->begin_next = 0;
	conn->commit_next = 0;
	check_connection(conn);
	if (conn->err != IDEM_OK)
		return NULL;

again:
	if (!conn->sess.unnamed &&
		(prepare(conn, form, stmt) < 0 ||
		 (begin && prepare(conn, form, IDEM_STMT_BEGIN) < 0) ||
		 (commit && prepare(conn, form, IDEM_STMT_END) < 0)))
		return NULL;
	if (begin || commit)
		pipeline(conn, form, stmt, nparams, values, lengths, formats, begin,
				 commit, &rt);
	else
	{
		memset(&rt, 0, sizeof(rt));
		if (conn->sess.unnamed)
			rt.stmt = PQexecParams(conn->pg, conn->sess.sql[stmt], nparams,
								   NULL, values, lengths, formats, 1);
		else
			rt.stmt = PQexecPrepared(conn->pg, stmt_name[form][stmt],
									 nparams, values, lengths, formats, 1);
	}
	res = rt.stmt;
	if (begin && PQresultStatus(rt.before) != PGRES_COMMAND_OK)
	{
		/* BEGIN failed: the statement was skipped */
		PQclear(rt.stmt);
		PQclear(rt.after);
		if (has_sqlstate(rt.before, "26000") &&
			PQtransactionStatus(conn->pg) == PQTRANS_IDLE)
		{
			/* BEGIN's statement deallocated: as below, nothing ran yet */
			conn->prepared = 0;
			if (vanished++ > 0)
				conn->sess.unnamed = 1;
			PQclear(rt.before);
			goto again;
		}
		idem__set_error_from_result(conn, rt.before);
		PQclear(rt.before);
		return NULL;
	}
	PQclear(rt.before);
	if (res && PQresultStatus(res) == PGRES_TUPLES_OK)
	{
		int			ntuples = PQntuples(res);

		if (commit && PQresultStatus(rt.after) != PGRES_COMMAND_OK)
		{
			PQclear(res);
			idem__set_error_from_result(conn, rt.after);
			PQclear(rt.after);
			return NULL;
		}
		PQclear(rt.after);
		if (ntuples != 1)
		{
			PQclear(res);
			idem__set_error(conn, IDEM_ERR_PROTOCOL,
							"%s returned %d rows, expected 1",
							stmt_name[form][stmt], ntuples);
			return NULL;
		}
		return res;
	}
	PQclear(rt.after);
	if (has_sqlstate(res, "26000"))
	{
		/*
		 * Deallocated behind our back (DEALLOCATE ALL, DISCARD ALL): all
		 * of them are gone, prepare again.  Gone again at once, they do
		 * not outlive a transaction (a pooler we did not detect): unnamed
		 * statements from now on.  Inside a transaction block the error
		 * has already aborted it, so it is reported instead, unless the
		 * block is the one our BEGIN just opened: it holds nothing yet,
		 * it is rolled back and the round trip made again.
		 */
		conn->prepared = 0;
		if (begin && PQtransactionStatus(conn->pg) == PQTRANS_INERROR)
			PQclear(PQexec(conn->pg, "ROLLBACK"));
		if (PQtransactionStatus(conn->pg) == PQTRANS_IDLE)
		{
			if (vanished++ > 0)
				conn->sess.unnamed = 1;
			PQclear(res);
			goto again;
		}
	}
	if (res && PQresultStatus(res) != PGRES_FATAL_ERROR)
	{
		idem__set_error(conn, IDEM_ERR_PROTOCOL,
						"unexpected result status %s from %s",
						PQresStatus(PQresultStatus(res)),
						stmt_name[form][stmt]);
		PQclear(res);
		return NULL;
	}
	idem__set_error_from_result(conn, res);
	PQclear(res);
	return NULL;
}

/*
 * Runs a query without parameters, or with one, unnamed, text results;
 * returns its one row, or NULL with the error set.
 */
static PGresult *
exec_text(idem_conn *conn, const char *sql, const char *param)
{
	PGresult   *res = PQexecParams(conn->pg, sql, param ? 1 : 0, NULL,
								   param ? &param : NULL, NULL, NULL, 0);

	if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
		return res;
	if (res && PQresultStatus(res) == PGRES_TUPLES_OK)
		idem__set_error(conn, IDEM_ERR_PROTOCOL, "query returned %d rows",
						PQntuples(res));
	else
		idem__set_error_from_result(conn, res);
	PQclear(res);
	return NULL;
}

/*
 * Learns, once per connection, what the calls need to know about the
 * server: see the comment at the top of the file.  A new backend PID means
 * the application reset a wrapped PGconn: probe again.
 */
static int
probe(idem_conn *conn)
{
	int			pid = PQbackendPID(conn->pg);
	PGresult   *res;
	char		sql[512];
	int			major = 0,
				minor = 0;
	int			i;

	if (conn->sess.probed && conn->sess.backend_pid == pid)
		return 0;
	idem__forget_session(conn);
	res = exec_text(conn, PROBE_SQL, NULL);
	if (res == NULL)
		return -1;
	conn->sess.backend_pid = pid;
	conn->sess.proxied = atoi(PQgetvalue(res, 0, 0)) != pid;
	conn->sess.unnamed = conn->sess.proxied;
	conn->sess.wait_ms = 30000;
	if (PQnfields(res) == 3 && !PQgetisnull(res, 0, 1))
	{
		snprintf(conn->sess.extversion, sizeof(conn->sess.extversion), "%s",
				 PQgetvalue(res, 0, 1));
		if (sscanf(conn->sess.extversion, "%d.%d", &major, &minor) < 1)
			major = 0;
		conn->sess.owners = major > 1 || (major == 1 && minor >= 2);
		if (!PQgetisnull(res, 0, 2) &&
			(size_t) PQgetlength(res, 0, 2) + 2 <= sizeof(conn->sess.schema))
			snprintf(conn->sess.schema, sizeof(conn->sess.schema), "%s.",
					 PQgetvalue(res, 0, 2));
	}
	PQclear(res);

	/* the statements, qualified with the schema (unqualified without one) */
	for (i = 0; i < IDEM_NSTMTS; i++)
	{
		const char *tmpl = stmt_sql[FORM(conn)][i];
		size_t		len;

		if (tmpl == NULL)
			continue;
		len = strlen(tmpl) + strlen(conn->sess.schema) + 1;
		if ((conn->sess.sql[i] = malloc(len)) == NULL)
		{
			idem__set_error(conn, IDEM_ERR_NOMEM, "out of memory");
			return -1;
		}
		snprintf(conn->sess.sql[i], len, tmpl, conn->sess.schema);
	}

	if (conn->sess.extversion[0])
	{
		snprintf(sql, sizeof(sql), SETTINGS_SQL, conn->sess.schema);
		res = exec_text(conn, sql, NULL);
		if (res == NULL)
			return -1;
		if (PQnfields(res) == 3)
		{
			if (!PQgetisnull(res, 0, 1))
				conn->sess.wait_ms = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
			if (!PQgetisnull(res, 0, 2))
				conn->sess.lease_ms = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
		}
		PQclear(res);
	}
	conn->sess.probed = 1;
	return 0;
}

/* what every call does first: a connection, probed */
static int
begin_call(idem_conn *conn)
{
	check_connection(conn);
	if (conn->err != IDEM_OK)
		return -1;
	return probe(conn);
}

/* the length of an interval in ms, by the server's rules */
static int
interval_ms(idem_conn *conn, const char *interval, int64_t *ms)
{
	PGresult   *res = exec_text(conn, INTERVAL_MS_SQL, interval);

	if (res == NULL)
		return -1;
	*ms = PQgetisnull(res, 0, 0) ? 0 : strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	return 0;
}

/* opts->wait in ms (NULL: idem.wait_timeout), the last one remembered */
static int
wait_ms_of(idem_conn *conn, const char *wait, int64_t *ms)
{
	char	   *copy;

	if (wait == NULL)
	{
		*ms = conn->sess.wait_ms;
		return 0;
	}
	if (conn->wait_text && strcmp(conn->wait_text, wait) == 0)
	{
		*ms = conn->wait_ms;
		return 0;
	}
	if (interval_ms(conn, wait, ms) < 0)
		return -1;
	if ((copy = idem__strdup(wait)) != NULL)
	{
		free(conn->wait_text);
		conn->wait_text = copy;
		conn->wait_ms = *ms;
	}
	return 0;
}

/*
 * The lease argument of idem_reserve for this handle (*arg; NULL leaves it
 * to the server's idem.lease) and whether its reservations are lease-owned
 * (*leased): see "Owners" in idem.h.
 */
static int
lease_arg(idem_conn *conn, const char **arg, int *leased)
{
	*arg = NULL;
	*leased = conn->lease_seen;
	if (conn->lease)
	{
		if (!conn->lease_resolved)
		{
			if (interval_ms(conn, conn->lease, &conn->lease_ms) < 0)
				return -1;
			conn->lease_resolved = 1;
		}
		if (conn->lease_ms < 0)
		{
			idem__set_error(conn, IDEM_ERR_BAD_INPUT,
							"lease must not be negative: \"%s\"", conn->lease);
			return -1;
		}
		if (conn->lease_ms > 0 && !conn->sess.owners)
		{
			idem__set_error(conn, IDEM_ERR_NO_EXTENSION,
							"leases need version 1.2 of the idempotency "
							"extension, this database has %s",
							conn->sess.extversion[0] ? conn->sess.extversion :
							"none");
			snprintf(conn->errdetail, sizeof(conn->errdetail), "%s",
					 "Run ALTER EXTENSION idempotency UPDATE, or use "
					 "session owners (a lease of \"0\").");
			return -1;
		}
		if (conn->sess.owners)
			*arg = conn->lease;
		*leased |= conn->lease_ms > 0;
		return 0;
	}
	if (!conn->sess.owners)
		return 0;
	if (conn->sess.lease_ms > 0)
		*leased = 1;
	else if (conn->sess.proxied)
	{
		*arg = IDEM_PROXY_LEASE;
		*leased = 1;
	}
	return 0;
}

/*
 * IK409 on a handle whose reservations are lease-owned (always, for
 * idem_extend): the token was fenced, our lease was taken over.
 */
static void
check_fenced(idem_conn *conn, int always)
{
	char		msg[sizeof(conn->errmsg)];

	if (conn->err != IDEM_ERR_IN_FLIGHT || !(always || conn->lease_seen))
		return;
	conn->err = IDEM_ERR_LEASE_LOST;
	snprintf(msg, sizeof(msg), "lease lost: %.1000s", conn->errmsg);
	memcpy(conn->errmsg, msg, sizeof(msg));
}

/* ---- the calls --------------------------------------------------------- */

static const char *
scope_of(const idem_opts *opts)
{
	return opts && opts->scope ? opts->scope : "";
}

static int
check_key(idem_conn *conn, const char *key)
{
	if (key == NULL)
	{
		idem__set_error(conn, IDEM_ERR_BAD_INPUT, "key must not be NULL");
		return -1;
	}
	return 0;
}

static int64_t
clock_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
sleep_ms(int64_t ms)
{
	struct timespec ts;

	if (ms <= 0)
		return;
	ts.tv_sec = (time_t) (ms / 1000);
	ts.tv_nsec = (long) (ms % 1000) * 1000000L;
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* one idem_reserve statement: 0 and *rec, or -1 with the error set */
static int
reserve_once(idem_conn *conn, const char *key, const idem_opts *opts,
			 const char *wait, const char *lease, idem_record **rec)
{
	const char *values[7];
	int			in_block;
	PGresult   *res;

	values[0] = key;
	values[1] = opts ? opts->request_hash : NULL;
	values[2] = opts ? opts->ttl : NULL;
	values[3] = wait;
	values[4] = scope_of(opts);
	values[5] = conn->owner;
	values[6] = lease;
	in_block = conn->begin_next || PQtransactionStatus(conn->pg) != PQTRANS_IDLE;
	res = exec_stmt(conn, conn->sess.owners && in_block ?
					IDEM_STMT_RESERVE_IN_BLOCK : IDEM_STMT_RESERVE,
					conn->sess.owners ? 7 : 5, values, NULL, NULL);
	if (res == NULL)
		return -1;
	*rec = idem__record_from_result(conn, res);
	PQclear(res);
	if (*rec == NULL)
		return -1;
	if ((*rec)->state == NULL)
	{
		idem_record_free(*rec);
		*rec = NULL;
		idem__set_error(conn, IDEM_ERR_PROTOCOL,
						"idem_reserve returned no state");
		return -1;
	}
	return 0;
}

/*
 * How long the next slice of a wait may be: at most a quarter of the
 * owner's remaining lease, at most IDEM_MAX_SLICE_MS, at most left.  0
 * when the key is no longer in flight or its lease has run out (the next
 * reserve replays it or takes it over at once); -1 on error.
 */
static int64_t
next_slice(idem_conn *conn, const char *key, const idem_opts *opts,
		   int64_t left)
{
	const char *values[2];
	PGresult   *res;
	idem_record *rec;
	int64_t		slice = IDEM_MAX_SLICE_MS;

	values[0] = key;
	values[1] = scope_of(opts);
	res = exec_stmt(conn, IDEM_STMT_GET, 2, values, NULL, NULL);
	if (res == NULL)
		return -1;
	rec = idem__record_from_result(conn, res);
	PQclear(res);
	if (rec == NULL)
		return -1;
	if (rec->state == NULL || strcmp(rec->state, "in_flight") != 0)
		slice = 0;
	else if (rec->has_lease_left)
	{
		slice = rec->lease_left_ms / 4;
		if (rec->lease_left_ms <= 0)
			slice = 0;
		else if (slice < 1)
			slice = 1;
	}
	idem_record_free(rec);
	if (slice > IDEM_MAX_SLICE_MS)
		slice = IDEM_MAX_SLICE_MS;
	return slice < left ? slice : left;
}

/*
 * Waits in slices (see idem_reserve in idem.h): reserve without waiting,
 * then, while the key is in flight, reserve again waiting one slice at a
 * time until total ms have passed.  Between two slices the connection is
 * free.  A reserve that answers IK409 before its slice is over (the server
 * refused at once, e.g. another token on this session) is not retried
 * before the slice is over.
 *
 * Behind a proxy that alone does not leave the owner a connection: a pool
 * of 3 hands its connections to the clients in the order they asked, and
 * 20 waiters that each hold one for a slice keep the owner's renewal
 * queued for about 20 / 3 slices, longer than a short lease.  So a waiter
 * watches how long its statements were queued before the server ran them
 * (the round trip beyond the slice): when they were, it backs off (shorter
 * slices, halved down to none, and a pause between them, doubled up to the
 * longest slice, with jitter); when they were not, it comes back by steps
 * (it starts with an eighth of the longest slice, and grows by eighths).
 * The waiters then hold the pool's connections a small part of the time,
 * and the owner's renewal and commit find one at once; a waiter that has
 * backed off sees the commit at its next reserve, at most a pause later.
 */
#define CONGESTED_MS 20			/* queued longer than this: the pool is full */
#define MIN_PAUSE_MS 25

static int
reserve_sliced(idem_conn *conn, const char *key, const idem_opts *opts,
			   int64_t total, const char *lease, idem_record **rec,
			   int *waited)
{
	int64_t		deadline = clock_ms() + total;
	int64_t		slice = 0;
	/* the slice, in eighths of the longest: behind a proxy it starts low */
	int			eighths = conn->sess.proxied ? 1 : 8;
	int64_t		pause = 0;
	unsigned	jitter = (unsigned) clock_ms() ^ (unsigned) (uintptr_t) conn;

	for (;;)
	{
		char		wait[32];
		int64_t		started = clock_ms();
		int64_t		now;
		int64_t		queued;
		int64_t		longest;

		snprintf(wait, sizeof(wait), "%lld ms", (long long) slice);
		if (reserve_once(conn, key, opts, wait, lease, rec) == 0)
			return 0;
		if (conn->err != IDEM_ERR_IN_FLIGHT)
			return -1;
		*waited = 1;
		now = clock_ms();
		queued = now - started - slice;
		if (now - started < slice)
		{
			sleep_ms((started + slice < deadline ? started + slice : deadline) - now);
			now = clock_ms();
		}
		if (now >= deadline)
			return -1;			/* the last IK409 stands */

		started = now;
		longest = next_slice(conn, key, opts, deadline - now);
		if (longest < 0)
			return -1;
		now = clock_ms();
		if (now - started > queued)
			queued = now - started;

		if (conn->sess.proxied && queued > CONGESTED_MS)
		{
			eighths /= 2;
			pause = pause ? pause * 2 : MIN_PAUSE_MS;
		}
		else if (conn->sess.proxied)
		{
			eighths = eighths < 8 ? eighths + 1 : 8;
			pause = pause > 2 * MIN_PAUSE_MS ? pause / 2 : 0;
		}
		if (pause > IDEM_MAX_SLICE_MS)
			pause = IDEM_MAX_SLICE_MS;
		slice = longest * eighths / 8;
		if (pause > 0 && longest > 0)
		{
			int64_t		p = pause < longest ? pause : longest;

			/* 75% to 125% of it, so that waiters do not come back together */
			jitter = jitter * 1103515245u + 12345u;
			p = p * (96 + (int64_t) ((jitter >> 16) % 65)) / 128;
			if (p > deadline - now)
				p = deadline - now;
			sleep_ms(p);
			if (clock_ms() >= deadline)
				slice = 0;		/* one last look */
		}
	}
}

/*
 * 1 when an interval's text is zero ("0", "0s", "0 ms", "0.0"): digits all
 * zeros, whatever the units; used only to tell that a wait cannot have
 * happened, so anything else counts as non-zero.
 */
static int
zero_interval(const char *s)
{
	int			digits = 0;

	for (; *s; s++)
	{
		if (*s >= '1' && *s <= '9')
			return 0;
		if (*s == '0')
			digits++;
		else if (*s == '-' || *s == '+')
			return 0;
	}
	return digits > 0;
}

/*
 * Whether a reserve that waited in one piece in the server waited (see
 * idem_event.waited): not when the wait was zero or the answer came at
 * once (IK422, or IK409 without "timed out"); when it timed out, yes; a
 * key or a response after a non-zero wait cannot tell.
 */
static int
waited_in_one_piece(const idem_conn *conn, const char *wait, int rc)
{
	if (wait ? zero_interval(wait) : conn->sess.wait_ms == 0)
		return 0;
	if (rc < 0)
		return conn->err == IDEM_ERR_IN_FLIGHT &&
			strncmp(conn->errmsg, "timed out", 9) == 0;
	return -1;
}

static idem_outcome
reserve_call(idem_conn *conn, const char *key, const idem_opts *opts,
			 idem_record **out, idem_call *call)
{
	const char *wait = opts ? opts->wait : NULL;
	const char *lease = NULL;
	idem_record *rec = NULL;
	idem_outcome outcome;
	int64_t		total = 0;
	int			leased = 0;
	int			sliced;
	int			rc;

	if (out)
		*out = NULL;
	conn->last_waited = 0;
	idem__clear_error(conn);
	if (check_key(conn, key) < 0)
		return idem__outcome_of(conn);
	if (begin_call(conn) < 0 || lease_arg(conn, &lease, &leased) < 0)
		return idem__outcome_of(conn);

	sliced = (conn->sess.proxied || leased) && !conn->begin_next &&
		PQtransactionStatus(conn->pg) == PQTRANS_IDLE;
	if (sliced && wait_ms_of(conn, wait, &total) < 0)
		return idem__outcome_of(conn);
	if (sliced && total > 0)
		rc = reserve_sliced(conn, key, opts, total, lease, &rec,
							&conn->last_waited);
	else
	{
		rc = reserve_once(conn, key, opts, wait, lease, &rec);
		if (!sliced)
			conn->last_waited = waited_in_one_piece(conn, wait, rc);
	}
	if (call)
		call->waited = conn->last_waited;
	if (rc < 0)
	{
		if (conn->err != IDEM_ERR_CONNECTION &&
			conn->err != IDEM_ERR_NO_EXTENSION)
			conn->stats.reserves++;
		return idem__outcome_of(conn);
	}
	conn->stats.reserves++;
	if (rec->fresh)
	{
		outcome = IDEM_FRESH;
		conn->stats.fresh++;
		if (rec->attempt > 1)
			conn->stats.takeovers++;
		if (rec->lease_expires_at != 0)
			conn->lease_seen = 1;
	}
	else if (strcmp(rec->state, "committed") == 0)
	{
		outcome = IDEM_REPLAY;
		conn->stats.replays++;
	}
	else
	{
		outcome = idem__fail(conn, IDEM_ERR_PROTOCOL,
							 "idem_reserve returned state \"%s\" without "
							 "ownership", rec->state);
		idem_record_free(rec);
		return outcome;
	}
	if (call)
		idem__call_record(call, rec);
	if (out)
		*out = rec;
	else
		idem_record_free(rec);
	return outcome;
}

idem_outcome
idem_reserve(idem_conn *conn, const char *key, const idem_opts *opts,
			 idem_record **out)
{
	idem_call	call;
	idem_outcome o;

	if (conn->observer == NULL)
		return reserve_call(conn, key, opts, out, NULL);
	idem__call_begin(&call);
	o = reserve_call(conn, key, opts, out, &call);
	idem__call_end(conn, &call, IDEM_OP_RESERVE, o, key, scope_of(opts));
	return o;
}

static idem_outcome
commit_call(idem_conn *conn, const char *key, const idem_opts *opts,
			int status, const void *body, size_t body_len,
			const char *headers_json)
{
	char		status_text[16];
	const char *values[7];
	int			lengths[7] = {0, 0, 0, 0, 0, 0, 0};
	int			formats[7] = {0, 0, 0, 1, 0, 0, 0};
	PGresult   *res;
	int			stored;

	idem__clear_error(conn);
	if (check_key(conn, key) < 0)
		return idem__outcome_of(conn);
	if (body_len > 0x7fffffff)
		return idem__fail(conn, IDEM_ERR_TOO_LARGE,
						  "response body of %zu bytes is too large",
						  body_len);
	if (begin_call(conn) < 0)
		return idem__outcome_of(conn);

	snprintf(status_text, sizeof(status_text), "%d", status);
	values[0] = key;
	values[1] = opts ? opts->request_hash : NULL;
	values[2] = status_text;
	/* a non-NULL pointer for an empty body: libpq sends NULL for NULL */
	values[3] = body ? (body_len ? (const char *) body : "") : NULL;
	lengths[3] = (int) body_len;
	values[4] = headers_json ? headers_json : "{}";
	values[5] = scope_of(opts);
	values[6] = conn->owner;
	res = exec_stmt(conn, IDEM_STMT_COMMIT, conn->sess.owners ? 7 : 6,
					values, lengths, formats);
	if (res == NULL)
	{
		check_fenced(conn, 0);
		return idem__outcome_of(conn);
	}
	stored = idem__bool_result(res);
	PQclear(res);
	if (stored)
	{
		conn->stats.commits++;
		return IDEM_FRESH;
	}
	return IDEM_REPLAY;
}

idem_outcome
idem_commit(idem_conn *conn, const char *key, const idem_opts *opts,
			int status, const void *body, size_t body_len,
			const char *headers_json)
{
	idem_call	call;
	idem_outcome o;

	if (conn->observer == NULL)
		return commit_call(conn, key, opts, status, body, body_len,
						   headers_json);
	idem__call_begin(&call);
	o = commit_call(conn, key, opts, status, body, body_len, headers_json);
	idem__call_end(conn, &call, IDEM_OP_COMMIT, o, key, scope_of(opts));
	return o;
}

static idem_outcome
release_call(idem_conn *conn, const char *key, const idem_opts *opts)
{
	const char *values[3];
	PGresult   *res;
	int			dropped;

	idem__clear_error(conn);
	if (check_key(conn, key) < 0 || begin_call(conn) < 0)
		return idem__outcome_of(conn);
	values[0] = key;
	values[1] = scope_of(opts);
	values[2] = conn->owner;
	res = exec_stmt(conn, IDEM_STMT_RELEASE, conn->sess.owners ? 3 : 2,
					values, NULL, NULL);
	if (res == NULL)
	{
		check_fenced(conn, 0);
		return idem__outcome_of(conn);
	}
	dropped = idem__bool_result(res);
	PQclear(res);
	if (dropped)
	{
		conn->stats.releases++;
		return IDEM_FRESH;
	}
	return IDEM_NOT_FOUND;
}

idem_outcome
idem_release(idem_conn *conn, const char *key, const idem_opts *opts)
{
	idem_call	call;
	idem_outcome o;

	if (conn->observer == NULL)
		return release_call(conn, key, opts);
	idem__call_begin(&call);
	o = release_call(conn, key, opts);
	idem__call_end(conn, &call, IDEM_OP_RELEASE, o, key, scope_of(opts));
	return o;
}

static idem_outcome
extend_call(idem_conn *conn, const char *key, const idem_opts *opts,
			int64_t *lease_expires_at)
{
	const char *values[4];
	PGresult   *res;
	int64_t		until;

	if (lease_expires_at)
		*lease_expires_at = 0;
	idem__clear_error(conn);
	if (check_key(conn, key) < 0 || begin_call(conn) < 0)
		return idem__outcome_of(conn);
	if (!conn->sess.owners)
	{
		idem__set_error(conn, IDEM_ERR_NO_EXTENSION,
						"idem_extend needs version 1.2 of the idempotency "
						"extension, this database has %s",
						conn->sess.extversion[0] ? conn->sess.extversion :
						"none");
		snprintf(conn->errdetail, sizeof(conn->errdetail), "%s",
				 "Run ALTER EXTENSION idempotency UPDATE.");
		return idem__outcome_of(conn);
	}
	values[0] = key;
	values[1] = conn->owner;
	/* the handle's lease, else the length it was reserved with */
	values[2] = conn->lease && conn->lease_resolved && conn->lease_ms > 0 ?
		conn->lease : NULL;
	values[3] = scope_of(opts);
	res = exec_stmt(conn, IDEM_STMT_EXTEND, 4, values, NULL, NULL);
	if (res == NULL)
	{
		check_fenced(conn, 1);
		return idem__outcome_of(conn);
	}
	if (PQgetisnull(res, 0, 0) || PQgetlength(res, 0, 0) != 8)
	{
		PQclear(res);
		return idem__fail(conn, IDEM_ERR_PROTOCOL,
						  "idem_extend returned no lease_expires_at");
	}
	until = idem__timestamptz_value(PQgetvalue(res, 0, 0));
	PQclear(res);
	if (lease_expires_at)
		*lease_expires_at = until;
	return IDEM_FRESH;
}

idem_outcome
idem_extend(idem_conn *conn, const char *key, const idem_opts *opts,
			int64_t *lease_expires_at)
{
	idem_call	call;
	idem_outcome o;

	if (conn->observer == NULL)
		return extend_call(conn, key, opts, lease_expires_at);
	idem__call_begin(&call);
	o = extend_call(conn, key, opts, lease_expires_at);
	call.leased = o == IDEM_FRESH;
	idem__call_end(conn, &call, IDEM_OP_EXTEND, o, key, scope_of(opts));
	return o;
}

static idem_outcome
get_call(idem_conn *conn, const char *key, const idem_opts *opts,
		 idem_record **out, idem_call *call)
{
	const char *values[2];
	PGresult   *res;
	idem_record *rec;
	idem_outcome outcome;

	if (out)
		*out = NULL;
	idem__clear_error(conn);
	if (check_key(conn, key) < 0 || begin_call(conn) < 0)
		return idem__outcome_of(conn);
	values[0] = key;
	values[1] = scope_of(opts);
	res = exec_stmt(conn, IDEM_STMT_GET, 2, values, NULL, NULL);
	if (res == NULL)
		return idem__outcome_of(conn);
	rec = idem__record_from_result(conn, res);
	PQclear(res);
	if (rec == NULL)
		return idem__outcome_of(conn);
	if (rec->state == NULL)
	{
		idem_record_free(rec);
		return IDEM_NOT_FOUND;
	}
	outcome = strcmp(rec->state, "committed") == 0 ? IDEM_REPLAY :
		IDEM_IN_FLIGHT;
	rec->fresh = 0;
	if (call)
		idem__call_record(call, rec);
	if (out)
		*out = rec;
	else
		idem_record_free(rec);
	return outcome;
}

idem_outcome
idem_get(idem_conn *conn, const char *key, const idem_opts *opts,
		 idem_record **out)
{
	idem_call	call;
	idem_outcome o;

	if (conn->observer == NULL)
		return get_call(conn, key, opts, out, NULL);
	idem__call_begin(&call);
	o = get_call(conn, key, opts, out, &call);
	idem__call_end(conn, &call, IDEM_OP_GET, o, key, scope_of(opts));
	return o;
}

static int64_t
purge_call(idem_conn *conn, int batch_limit)
{
	char		limit_text[16];
	const char *values[1];
	PGresult   *res;
	int64_t		n;

	idem__clear_error(conn);
	if (begin_call(conn) < 0)
	{
		idem__outcome_of(conn);
		return -1;
	}
	snprintf(limit_text, sizeof(limit_text), "%d", batch_limit);
	values[0] = batch_limit > 0 ? limit_text : NULL;
	res = exec_stmt(conn, IDEM_STMT_PURGE, 1, values, NULL, NULL);
	if (res == NULL)
	{
		idem__outcome_of(conn);
		return -1;
	}
	if (PQgetisnull(res, 0, 0) || PQgetlength(res, 0, 0) != 8)
	{
		PQclear(res);
		idem__set_error(conn, IDEM_ERR_PROTOCOL,
						"idem_purge returned no count");
		idem__outcome_of(conn);
		return -1;
	}
	n = (int64_t) idem__be64((const unsigned char *) PQgetvalue(res, 0, 0));
	PQclear(res);
	return n;
}

int64_t
idem_purge(idem_conn *conn, int batch_limit)
{
	idem_call	call;
	int64_t		n;

	if (conn->observer == NULL)
		return purge_call(conn, batch_limit);
	idem__call_begin(&call);
	n = purge_call(conn, batch_limit);
	call.count = n > 0 ? n : 0;
	idem__call_end(conn, &call, IDEM_OP_PURGE,
				   n < 0 ? IDEM_ERROR : IDEM_FRESH, NULL, NULL);
	return n;
}

/* ---- owners and leases ------------------------------------------------- */

int
idem_set_lease(idem_conn *conn, const char *lease)
{
	char	   *copy = NULL;

	idem__clear_error(conn);
	if (lease && (copy = idem__strdup(lease)) == NULL)
	{
		idem__set_error(conn, IDEM_ERR_NOMEM, "out of memory");
		return -1;
	}
	free(conn->lease);
	conn->lease = copy;
	conn->lease_resolved = 0;
	conn->lease_seen = 0;
	return 0;
}

const char *
idem_lease(const idem_conn *conn)
{
	return conn ? conn->lease : NULL;
}

const char *
idem_owner(const idem_conn *conn)
{
	return conn ? conn->owner : "";
}

int
idem_proxied(idem_conn *conn)
{
	idem__clear_error(conn);
	if (begin_call(conn) < 0)
		return -1;
	return conn->sess.proxied;
}

int
idem_uses_leases(idem_conn *conn)
{
	const char *arg;
	int			leased;

	idem__clear_error(conn);
	if (begin_call(conn) < 0 || lease_arg(conn, &arg, &leased) < 0)
		return -1;
	return leased;
}

/* ---- runners in a transaction of their own ----------------------------- */

int
idem_set_transaction(idem_conn *conn, int on)
{
	if (conn == NULL)
		return -1;
	conn->transaction = on != 0;
	return 0;
}

int
idem_transaction(const idem_conn *conn)
{
	return conn ? conn->transaction : 0;
}

/* ---- run ids (used by idem_step) --------------------------------------- */

int
idem_set_run_id(idem_conn *conn, const char *run_id)
{
	char	   *copy = NULL;

	idem__clear_error(conn);
	if (run_id)
	{
		copy = idem__strdup(run_id);
		if (copy == NULL)
		{
			idem__set_error(conn, IDEM_ERR_NOMEM, "out of memory");
			return -1;
		}
	}
	free(conn->run_id);
	conn->run_id = copy;
	return 0;
}

const char *
idem_run_id(const idem_conn *conn)
{
	return conn->run_id;
}
