/*-------------------------------------------------------------------------
 *
 * idem_lease.c
 *	  Renewing a lease while its handler runs.
 *
 * A runner whose reservation is lease-owned starts one thread before the
 * handler and joins it after: every third of the lease the thread calls
 * idem_extend on a connection of its own, so that a handler that runs
 * longer than the lease keeps it, and a handler that is stopped (SIGSTOP,
 * a debugger, a paused VM) loses it to the next caller instead of holding
 * the key forever.  The thread never touches the handle's PGconn or its
 * error state; it reports one thing, atomically: the lease is lost (IK409,
 * fenced: another caller took it over; or IK404: it is gone).  Other
 * failures (connection lost) are retried, sooner than a full period.
 *
 * idem_extend waits for the key's lock up to idem.wait_timeout (at least a
 * second), and a session owner that took the key over holds that lock for
 * as long as it lives; so the renewal sets the wait to 0 for its own
 * statement, and an IK409 is taken for a lost lease only once idem_get
 * confirms it (the key is gone, committed, or has a new attempt): an
 * IK409 for a lock held a moment too long is only retried.
 *
 * The connection is opened from the handle's connection parameters
 * (PQconninfo), by the thread, when the first renewal is due (a handler
 * shorter than a third of its lease never needs one), and kept for the
 * next runs until idem_free.  The statement is unnamed, so it works behind
 * a transaction pooler too.
 *
 *-------------------------------------------------------------------------
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "idem_int.h"

/* with the extension's schema for %s, as the handle's statements */
#define EXTEND_SQL \
	"SELECT pg_catalog.set_config('idem.wait_timeout', '0', true), " \
	"%sidem_extend($1::text, $2::text, NULL::interval, $3::text)"
#define CONFIRM_SQL \
	"SELECT state, attempt FROM %sidem_get($1::text, $2::text)"

/* the shortest period between two renewals, and between two retries */
#define MIN_PERIOD_MS 20

static void
free_strings(char **v)
{
	size_t		i;

	if (v == NULL)
		return;
	for (i = 0; v[i]; i++)
		free(v[i]);
	free(v);
}

/*
 * The handle's connection parameters as keyword / value arrays for
 * PQconnectdbParams, with a connect_timeout of 10 s when none is set, so
 * that the thread (and the join) never waits for a connect forever.
 */
static int
capture_conninfo(idem_renewer *r, PGconn *pg)
{
	PQconninfoOption *opts = PQconninfo(pg);
	PQconninfoOption *o;
	size_t		n = 0,
				i = 0;
	int			has_timeout = 0;

	if (opts == NULL)
		return -1;
	for (o = opts; o->keyword; o++)
		n++;
	r->keywords = calloc(n + 2, sizeof(char *));
	r->values = calloc(n + 2, sizeof(char *));
	if (r->keywords == NULL || r->values == NULL)
		goto fail;
	for (o = opts; o->keyword; o++)
	{
		if (o->val == NULL || o->val[0] == '\0')
			continue;
		if (strcmp(o->keyword, "connect_timeout") == 0)
			has_timeout = 1;
		r->keywords[i] = idem__strdup(o->keyword);
		r->values[i] = idem__strdup(o->val);
		if (r->keywords[i] == NULL || r->values[i] == NULL)
		{
			free(r->keywords[i]);
			free(r->values[i]);
			r->keywords[i] = r->values[i] = NULL;
			goto fail;
		}
		i++;
	}
	if (!has_timeout)
	{
		r->keywords[i] = idem__strdup("connect_timeout");
		r->values[i] = idem__strdup("10");
		if (r->keywords[i] == NULL || r->values[i] == NULL)
		{
			free(r->keywords[i]);
			free(r->values[i]);
			r->keywords[i] = r->values[i] = NULL;
			goto fail;
		}
	}
	PQconninfoFree(opts);
	return 0;

fail:
	PQconninfoFree(opts);
	free_strings(r->keywords);
	free_strings(r->values);
	r->keywords = r->values = NULL;
	return -1;
}

static idem_renewer *
renewer_new(PGconn *pg)
{
	idem_renewer *r = calloc(1, sizeof(idem_renewer));
	pthread_condattr_t attr;

	if (r == NULL)
		return NULL;
	if (capture_conninfo(r, pg) < 0)
	{
		free(r);
		return NULL;
	}
	pthread_mutex_init(&r->mu, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&r->cv, &attr);
	pthread_condattr_destroy(&attr);
	atomic_init(&r->lost, 0);
	return r;
}

void
idem__renewer_free(idem_renewer *r)
{
	if (r == NULL)
		return;
	/* the runners join the thread before they return */
	if (r->pg)
		PQfinish(r->pg);
	free_strings(r->keywords);
	free_strings(r->values);
	free(r->key);
	free(r->scope);
	pthread_cond_destroy(&r->cv);
	pthread_mutex_destroy(&r->mu);
	free(r);
}

/* a connection that is up, or NULL for now */
static PGconn *
renewal_connection(idem_renewer *r)
{
	if (r->pg == NULL)
		r->pg = PQconnectdbParams((const char *const *) r->keywords,
								  (const char *const *) r->values, 0);
	else if (PQstatus(r->pg) != CONNECTION_OK)
		PQreset(r->pg);
	if (r->pg == NULL || PQstatus(r->pg) != CONNECTION_OK)
	{
		snprintf(r->errmsg, sizeof(r->errmsg), "renewal connection: %s",
				 r->pg ? PQerrorMessage(r->pg) : "out of memory");
		return NULL;
	}
	return r->pg;
}

/*
 * After an IK409: 1 when the reservation is no longer the one we hold
 * (gone, committed, or taken over: another attempt), 0 when it still is,
 * -1 when we cannot tell.
 */
static int
taken_over(idem_renewer *r, PGconn *pg)
{
	const char *values[2];
	char		sql[sizeof(CONFIRM_SQL) + sizeof(r->schema)];
	PGresult   *res;
	int			rc = -1;

	values[0] = r->key;
	values[1] = r->scope;
	snprintf(sql, sizeof(sql), CONFIRM_SQL, r->schema);
	res = PQexecParams(pg, sql, 2, NULL, values, NULL, NULL, 0);
	if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
		rc = PQgetisnull(res, 0, 0) ||
			strcmp(PQgetvalue(res, 0, 0), "in_flight") != 0 ||
			atoi(PQgetvalue(res, 0, 1)) != r->attempt;
	PQclear(res);
	return rc;
}

/* one idem_extend: 0 renewed, 1 the lease is lost, -1 try again */
static int
extend_once(idem_renewer *r)
{
	PGconn	   *pg = renewal_connection(r);
	const char *values[3];
	char		sql[sizeof(EXTEND_SQL) + sizeof(r->schema)];
	PGresult   *res;
	const char *state;
	int			rc = -1;

	if (pg == NULL)
		return -1;
	values[0] = r->key;
	values[1] = r->owner;
	values[2] = r->scope;
	snprintf(sql, sizeof(sql), EXTEND_SQL, r->schema);
	res = PQexecParams(pg, sql, 3, NULL, values, NULL, NULL, 0);
	if (res && PQresultStatus(res) == PGRES_TUPLES_OK)
	{
		PQclear(res);
		r->renewals++;
		return 0;
	}
	state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	snprintf(r->errmsg, sizeof(r->errmsg), "%s",
			 res && PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) ?
			 PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) :
			 PQerrorMessage(pg));
	if (state && strcmp(state, "IK404") == 0)
		rc = 1;
	else if (state && strcmp(state, "IK409") == 0)
		rc = taken_over(r, pg) == 1 ? 1 : -1;
	PQclear(res);
	return rc;
}

static void
deadline_after(struct timespec *ts, int64_t ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += (time_t) (ms / 1000);
	ts->tv_nsec += (long) (ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L)
	{
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

static void *
renew_main(void *arg)
{
	idem_renewer *r = arg;
	int64_t		delay = r->period_ms;

	pthread_mutex_lock(&r->mu);
	for (;;)
	{
		struct timespec until;
		int			rc;

		deadline_after(&until, delay);
		while (!r->stop &&
			   pthread_cond_timedwait(&r->cv, &r->mu, &until) == 0)
			;
		if (r->stop)
			break;
		pthread_mutex_unlock(&r->mu);
		rc = extend_once(r);
		pthread_mutex_lock(&r->mu);
		if (rc > 0)
		{
			atomic_store(&r->lost, 1);
			break;
		}
		/* after a failure, try again within a quarter of a period */
		delay = rc == 0 ? r->period_ms : r->period_ms / 4;
		if (delay < MIN_PERIOD_MS)
			delay = MIN_PERIOD_MS;
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

/*
 * Starts renewing conn's lease on (scope, key), held as that attempt,
 * whose length is lease_ms, every third of it.  Returns 0 when the thread runs (idem__renew_stop
 * must follow), -1 when it could not be started (out of memory, no thread,
 * or one already runs: a handler that runs a nested runner on its own
 * handle); the handler then runs without renewal.
 */
int
idem__renew_start(idem_conn *conn, const char *key, const char *scope,
				  int attempt, int64_t lease_ms)
{
	idem_renewer *r = conn->renewer;
	sigset_t	all,
				old;
	int			rc;

	if (r == NULL)
	{
		r = conn->renewer = renewer_new(conn->pg);
		if (r == NULL)
			return -1;
	}
	if (r->running)
		return -1;
	free(r->key);
	free(r->scope);
	r->key = idem__strdup(key);
	r->scope = idem__strdup(scope);
	if (r->key == NULL || r->scope == NULL)
		return -1;
	memcpy(r->owner, conn->owner, sizeof(r->owner));
	memcpy(r->schema, conn->sess.schema, sizeof(r->schema));
	r->attempt = attempt;
	r->period_ms = lease_ms / 3;
	if (r->period_ms < MIN_PERIOD_MS)
		r->period_ms = MIN_PERIOD_MS;
	r->stop = 0;
	r->renewals = 0;
	r->errmsg[0] = '\0';
	atomic_store(&r->lost, 0);

	/* the thread takes every signal blocked, so they go to the others */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&r->thread, NULL, renew_main, r);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0)
		return -1;
	r->running = 1;
	return 0;
}

/*
 * Stops the renewal and joins its thread.  Returns 1 when the renewal
 * found the lease lost (why: conn->renewer->errmsg), else 0.
 */
int
idem__renew_stop(idem_conn *conn)
{
	idem_renewer *r = conn->renewer;

	if (r == NULL || !r->running)
		return 0;
	pthread_mutex_lock(&r->mu);
	r->stop = 1;
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
	pthread_join(r->thread, NULL);
	r->running = 0;
	return atomic_load(&r->lost) != 0;
}
