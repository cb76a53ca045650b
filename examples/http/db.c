/*
 * db.c: the HTTP example's database code.
 *
 * Each worker thread has its own PostgreSQL session (libpq's environment,
 * or --dsn) wrapped in its own libidem handle (idem_wrap), whose observer
 * writes the call log; the schema is made at start-up; the charges' SQL.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "service.h"

/* ---- the call log --------------------------------------------------------- */

/* writes v to f as a logfmt value: quoted, with \" \\ and controls escaped */
static void
logfmt_quoted(FILE *f, const char *v)
{
	const unsigned char *p;

	fputc('"', f);
	for (p = (const unsigned char *) v; *p; p++)
	{
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p == '\n')
			fputs("\\n", f);
		else if (*p < 0x20 || *p == 0x7f)
			fprintf(f, "\\x%02x", *p);
		else
			fputc(*p, f);
	}
	fputc('"', f);
}

/* the line of one call, without its newline */
static void
write_call_line(FILE *f, const idem_event *ev, const worker *w)
{
	struct timespec ts;
	struct tm	tm;
	char		when[32];
	char		req[512];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
	fprintf(f, "ts=%s.%03ldZ worker=%d req=", when, ts.tv_nsec / 1000000,
			w->id);
	snprintf(req, sizeof(req), "%s %s", w->method ? w->method : "-",
			 w->url ? w->url : "-");
	logfmt_quoted(f, req);
	fprintf(f, " op=%s outcome=%s error=%s sqlstate=\"%s\" key=",
			idem_op_name(ev->op), idem_outcome_name(ev->outcome),
			idem_error_name(ev->error), ev->sqlstate);
	if (ev->key)
		logfmt_quoted(f, ev->key);
	fputs(" scope=", f);
	if (ev->scope)
		logfmt_quoted(f, ev->scope);
	fprintf(f, " attempt=%d waited=%s leased=%s status=%d state=%s "
			"duration_us=%lld", ev->attempt,
			ev->waited > 0 ? "true" : ev->waited == 0 ? "false" : "unknown",
			ev->leased ? "true" : "false", ev->status,
			ev->state ? ev->state : "-", (long long) ev->duration_us);
	if (ev->message[0])
	{
		fputs(" msg=", f);
		logfmt_quoted(f, ev->message);
	}
}

/*
 * The observer of every worker's libidem handle: one logfmt line per call,
 * written whole (O_APPEND), so that the lines of the workers never mix:
 *
 *   ts=2026-12-01T18:18:38.412Z worker=3 req="POST /charges" op=reserve
 *   outcome=fresh error=ok sqlstate="" key="order-1001" scope="acme"
 *   attempt=1 waited=unknown leased=false status=0 state=in_flight
 *   duration_us=812
 *
 * (one line), plus msg="..." when the call failed.  It runs on the worker's
 * thread, inside the call, and reads only the event.
 */
static void
log_call(const idem_event *ev, void *arg)
{
	char	   *line = NULL;
	size_t		len = 0;
	size_t		off = 0;
	FILE	   *f;

	if (call_log_fd < 0 || (f = open_memstream(&line, &len)) == NULL)
		return;
	write_call_line(f, ev, arg);
	fputc('\n', f);
	if (fclose(f) != 0)
	{
		free(line);
		return;
	}
	while (off < len)
	{
		ssize_t		n = write(call_log_fd, line + off, len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		off += (size_t) n;
	}
	free(line);
}

/* ---- sessions -------------------------------------------------------------- */

void
worker_close(worker *w)
{
	idem_free(w->idem);
	w->idem = NULL;
	if (w->pg)
		PQfinish(w->pg);
	w->pg = NULL;
}

static PGconn *
db_connect(void)
{
	const char *keys[] = {"dbname", "fallback_application_name", NULL};
	const char *vals[] = {cfg.dsn ? cfg.dsn : "", "idem-http-example", NULL};

	/* an empty dbname with expand_dbname takes everything from the
	 * environment, like psql */
	return PQconnectdbParams(keys, vals, 1);
}

/* Connects the worker's session (again) when needed; -1 with errbuf set
 * when the database cannot be reached. */
int
worker_ready(worker *w, char *errbuf, size_t errlen)
{
	if (w->pg && PQstatus(w->pg) != CONNECTION_OK)
		worker_close(w);
	if (w->pg)
		return 0;
	w->pg = db_connect();
	if (w->pg == NULL || PQstatus(w->pg) != CONNECTION_OK)
	{
		snprintf(errbuf, errlen, "%s",
				 w->pg ? PQerrorMessage(w->pg) : "out of memory");
		errbuf[strcspn(errbuf, "\n")] = '\0';
		worker_close(w);
		return -1;
	}
	w->idem = idem_wrap(w->pg);
	if (w->idem == NULL || idem_set_lease(w->idem, cfg.lease) < 0 ||
		(call_log_fd >= 0 && idem_set_observer(w->idem, log_call, w) < 0))
	{
		snprintf(errbuf, errlen, "out of memory");
		worker_close(w);
		return -1;
	}
	return 0;
}

/* Runs a statement without parameters; 0 when it succeeded. */
int
exec_simple(PGconn *pg, const char *sql, char *errbuf, size_t errlen)
{
	PGresult   *r = PQexec(pg, sql);
	int			ok = r && (PQresultStatus(r) == PGRES_COMMAND_OK ||
						   PQresultStatus(r) == PGRES_TUPLES_OK);

	if (!ok && errbuf)
	{
		snprintf(errbuf, errlen, "%s", PQerrorMessage(pg));
		errbuf[strcspn(errbuf, "\n")] = '\0';
	}
	PQclear(r);
	return ok ? 0 : -1;
}

/* ---- start-up ----------------------------------------------------------- */

static const char *const schema_sql =
"SET LOCAL client_min_messages = warning;"
"SELECT pg_advisory_xact_lock(hashtext('idem-http-example'));"
"CREATE SCHEMA IF NOT EXISTS http_example;"
"CREATE TABLE IF NOT EXISTS http_example.charges ("
"  id bigserial PRIMARY KEY,"
"  tenant text NOT NULL,"
"  idempotency_key text,"
"  amount bigint NOT NULL CHECK (amount > 0),"
"  currency text NOT NULL,"
"  description text,"
"  created_at timestamptz NOT NULL DEFAULT now());";

/* a bad --wait, --ttl or --lease would fail every request: refuse it now */
static int
check_intervals(PGconn *pg)
{
	const char *iv[3] = {cfg.wait, cfg.ttl, cfg.lease};
	const char *opt[3] = {"--wait", "--ttl", "--lease"};
	int			k;

	for (k = 0; k < 3; k++)
	{
		PGresult   *r;
		int			ok;

		if (iv[k] == NULL)
			continue;
		r = PQexecParams(pg, "SELECT $1::pg_catalog.interval", 1, NULL,
						 &iv[k], NULL, NULL, 0);
		ok = PQresultStatus(r) == PGRES_TUPLES_OK;
		PQclear(r);
		if (!ok)
		{
			fprintf(stderr, "service: %s %s: not an interval: %s", opt[k], iv[k],
					PQerrorMessage(pg));
			return -1;
		}
	}
	return 0;
}

int
prepare_database(void)
{
	PGconn	   *pg = db_connect();
	PGresult   *r;
	char		err[512];
	int			ok;

	if (pg == NULL || PQstatus(pg) != CONNECTION_OK)
	{
		fprintf(stderr, "service: cannot connect to the database: %s",
				pg ? PQerrorMessage(pg) : "out of memory\n");
		PQfinish(pg);
		return -1;
	}
	r = PQexec(pg, "SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'idempotency'");
	ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
	PQclear(r);
	if (!ok)
	{
		fprintf(stderr, "service: the idempotency extension is not installed in "
				"database \"%s\": run CREATE EXTENSION idempotency there\n", PQdb(pg));
		PQfinish(pg);
		return -1;
	}
	if (check_intervals(pg) < 0)
	{
		PQfinish(pg);
		return -2;				/* bad usage */
	}
	if (exec_simple(pg, "BEGIN", err, sizeof(err)) < 0 ||
		exec_simple(pg, schema_sql, err, sizeof(err)) < 0 ||
		exec_simple(pg, "COMMIT", err, sizeof(err)) < 0)
	{
		fprintf(stderr, "service: cannot create the table http_example.charges: %s\n", err);
		PQfinish(pg);
		return -1;
	}
	fprintf(stderr, "service: database \"%s\" on %s ready\n", PQdb(pg),
			PQhost(pg) ? PQhost(pg) : "?");
	PQfinish(pg);
	return 0;
}

/* ---- charges -------------------------------------------------------------- */

int
db_insert_charge(worker *w, const char *tenant, const char *key,
				 charge_row *row)
{
	char		amount[32];
	const char *params[5];
	PGresult   *r;

	snprintf(amount, sizeof(amount), "%lld", row->amount);
	params[0] = tenant;
	params[1] = key;
	params[2] = amount;
	params[3] = row->currency;
	params[4] = row->description;
	r = PQexecParams(w->pg,
					 "INSERT INTO http_example.charges (tenant, idempotency_key, amount, currency, description) "
					 "VALUES ($1, $2, $3::bigint, $4, $5) "
					 "RETURNING id, extract(epoch FROM created_at)::bigint",
					 5, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
	{
		logf_("insert failed: %s", PQerrorMessage(w->pg));
		PQclear(r);
		return -1;
	}
	row->id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	row->created = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
	PQclear(r);
	return 1;
}

int
db_read_charge(worker *w, const char *tenant, charge_row *row)
{
	char		idtext[32];
	const char *params[2];
	PGresult   *r;

	snprintf(idtext, sizeof(idtext), "%lld", row->id);
	params[0] = idtext;
	params[1] = tenant;
	r = PQexecParams(w->pg,
					 "SELECT amount, currency, description, "
					 "extract(epoch FROM created_at)::bigint "
					 "FROM http_example.charges WHERE id = $1::bigint AND tenant = $2",
					 2, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
	{
		logf_("select failed: %s", PQerrorMessage(w->pg));
		PQclear(r);
		return -1;
	}
	if (PQntuples(r) == 0)
	{
		PQclear(r);
		return 0;
	}
	row->amount = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	snprintf(row->currency, sizeof(row->currency), "%s", PQgetvalue(r, 0, 1));
	row->created = strtoll(PQgetvalue(r, 0, 3), NULL, 10);
	row->description = NULL;
	if (!PQgetisnull(r, 0, 2) &&
		(row->description = strdup(PQgetvalue(r, 0, 2))) == NULL)
	{
		logf_("select failed: out of memory");
		PQclear(r);
		return -1;
	}
	PQclear(r);
	return 1;
}
