/*-------------------------------------------------------------------------
 *
 * idem_run.c
 *	  The runners: a handler under a key (idem_run), durable steps
 *	  (idem_step), and the HTTP policy and middleware (idem_http_*).
 *
 * All of them are built on the public calls: reserve, run the callback
 * only when the reservation is fresh, then commit or release on the same
 * handle.  Concurrent callers wait in idem_reserve, so a callback runs
 * once per key however many callers race for it.  While the callback of a
 * lease-owned reservation runs, its lease is renewed (idem_lease.c); a
 * lease lost meanwhile is reported as IDEM_LEASE_LOST, never as success.
 *
 * The HTTP helper's answers that are not the handler's response can be
 * given as RFC 9457 problem details (idem_http_problem_json), chosen by
 * the request's Accept header (idem_http_wants_problem).
 *
 *-------------------------------------------------------------------------
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idem_int.h"

typedef struct idem_exclusion
{
	char	   *method;			/* "*" = any */
	char	   *path;			/* without the trailing '*' when prefix */
	int			prefix;
} idem_exclusion;

struct idem_http
{
	char	   *header_name;
	int			required;
	int			cache_failures;
	char	   *ttl;
	char	   *wait;
	idem_exclusion *excl;
	size_t		nexcl;
};

/* Saves and restores a handle's error around a cleanup call. */
typedef struct saved_error
{
	idem_error	err;
	char		errmsg[sizeof(((idem_conn *) 0)->errmsg)];
	char		errdetail[sizeof(((idem_conn *) 0)->errdetail)];
	char		sqlstate[6];
} saved_error;

static void
save_error(const idem_conn *conn, saved_error *s)
{
	s->err = conn->err;
	memcpy(s->errmsg, conn->errmsg, sizeof(s->errmsg));
	memcpy(s->errdetail, conn->errdetail, sizeof(s->errdetail));
	memcpy(s->sqlstate, conn->sqlstate, sizeof(s->sqlstate));
}

static void
restore_error(idem_conn *conn, const saved_error *s)
{
	conn->err = s->err;
	memcpy(conn->errmsg, s->errmsg, sizeof(s->errmsg));
	memcpy(conn->errdetail, s->errdetail, sizeof(s->errdetail));
	memcpy(conn->sqlstate, s->sqlstate, sizeof(s->sqlstate));
}

static idem_outcome
nomem(idem_conn *conn)
{
	return idem__fail(conn, IDEM_ERR_NOMEM, "out of memory");
}

/*
 * Stores resp under key, reconnecting once when the connection was lost
 * and the handle owns it (the commit then adopts our orphaned reservation).
 */
static idem_outcome
commit_response(idem_conn *conn, const char *key, const idem_opts *opts,
				idem_response *resp, int in_block)
{
	const char *json = idem_response_headers_json(resp);
	idem_outcome o;
	int			attempt;

	if (json == NULL)
		return nomem(conn);
	for (attempt = 0;; attempt++)
	{
		o = idem_commit(conn, key, opts, resp->status,
						resp->has_body ? (const void *) resp->body : NULL,
						resp->body_len, json);
		/* a block lost with the connection took the reservation along */
		if (o != IDEM_ERROR || conn->err != IDEM_ERR_CONNECTION ||
			!conn->owned || attempt > 0 || in_block)
			return o;
		if (idem_reconnect(conn) < 0)
			return IDEM_ERROR;
	}
}

/* Opens a runner's transaction block alone; 0, or -1 with the error set. */
static int
begin_block(idem_conn *conn)
{
	PGresult   *res = PQexec(conn->pg, "BEGIN");
	int			ok = PQresultStatus(res) == PGRES_COMMAND_OK;

	if (!ok)
		idem__set_error_from_result(conn, res);
	PQclear(res);
	return ok ? 0 : -1;
}

/*
 * Ends the transaction block a runner opened (idem_set_transaction):
 * COMMIT, or ROLLBACK.  0, or -1 with the error set when COMMIT failed;
 * a ROLLBACK that fails keeps the handle's error as it was (the server
 * rolls the block back when the session ends anyway).  Nothing when no
 * block is open any more (a COMMIT that went with idem_commit, or one
 * that failed).
 */
static int
end_block(idem_conn *conn, int commit)
{
	PGresult   *res;
	int			ok;

	if (PQtransactionStatus(conn->pg) == PQTRANS_IDLE ||
		PQtransactionStatus(conn->pg) == PQTRANS_UNKNOWN)
		return 0;
	if (PQtransactionStatus(conn->pg) == PQTRANS_INERROR)
		commit = 0;
	res = PQexec(conn->pg, commit ? "COMMIT" : "ROLLBACK");
	ok = PQresultStatus(res) == PGRES_COMMAND_OK;
	if (!ok && commit)
		idem__set_error_from_result(conn, res);
	PQclear(res);
	return ok || !commit ? 0 : -1;
}

/* the outcome of a handler whose lease was lost while it ran */
static idem_outcome
lease_lost(idem_conn *conn, const char *key, const char *why)
{
	saved_error saved;

	save_error(conn, &saved);
	idem__fail(conn, IDEM_ERR_LEASE_LOST,
			   "the lease on key \"%s\" ran out while the handler ran and "
			   "another caller took the key over: the handler ran, its "
			   "response was not stored", key);
	if (why && *why)
		snprintf(conn->errdetail, sizeof(conn->errdetail), "%s", why);
	else if (saved.errmsg[0])
		snprintf(conn->errdetail, sizeof(conn->errdetail), "%s",
				 saved.errmsg);
	return IDEM_LEASE_LOST;
}

/*
 * The core of every runner.  http is NULL for plain runs (every response
 * the handler returns 0 for is stored), else its cache policy applies.
 */
static idem_outcome
run_guarded(idem_conn *conn, const char *key, const idem_opts *opts,
			const idem_http *http, int tx, idem_handler_fn handler,
			void *arg, idem_record **out, idem_call *call)
{
	idem_record *rec = NULL;
	idem_response *resp;
	idem_outcome o;
	int			rc;
	int			leased;
	int			renewing = 0;
	int			lost = 0;
	char		why[sizeof(((idem_renewer *) 0)->errmsg)] = "";
	/* a block of our own: BEGIN goes with the reserve (see exec_stmt) */
	int			block = tx && PQtransactionStatus(conn->pg) == PQTRANS_IDLE;

	conn->begin_next = block;
	o = idem_reserve(conn, key, opts, &rec);
	conn->begin_next = 0;
	if (call)
	{
		call->waited = conn->last_waited;
		call->attempt = rec ? rec->attempt : 0;
		call->leased = rec && rec->lease_expires_at != 0;
	}
	if (o == IDEM_REPLAY)
	{
		if (block)
			end_block(conn, 0);
		*out = rec;
		return o;
	}
	if (o != IDEM_FRESH)
	{
		if (block)
		{
			saved_error saved;

			save_error(conn, &saved);
			end_block(conn, 0);
			restore_error(conn, &saved);
		}
		return o;
	}

	resp = idem_response_new();
	if (resp == NULL)
	{
		idem_record_free(rec);
		if (block)
			end_block(conn, 0);
		else
			idem_release(conn, key, opts);
		return nomem(conn);
	}
	if (http)
		resp->status = 200;
	resp->attempt = rec->attempt;
	resp->key = key;
	/*
	 * A reservation made inside the application's transaction block is
	 * seen by nobody else until that transaction ends, and the commit
	 * below goes into the same transaction: no one can take it over in
	 * between, and a renewal from another connection would not even find
	 * it (IK404, taken for a lost lease).  So it is not renewed.
	 */
	leased = rec->lease_expires_at != 0;
	if (leased && PQtransactionStatus(conn->pg) == PQTRANS_IDLE)
		renewing = idem__renew_start(conn, key, opts && opts->scope ?
									 opts->scope : "", rec->attempt,
									 rec->has_lease_left ?
									 rec->lease_left_ms : 0) == 0;
	resp->renewer = renewing ? conn->renewer : NULL;
	idem_record_free(rec);

	conn->stats.handler_runs++;
	rc = handler(resp, arg);

	if (renewing)
	{
		lost = idem__renew_stop(conn);
		if (lost)
			snprintf(why, sizeof(why), "%s", conn->renewer->errmsg);
	}
	resp->renewer = NULL;

	if (rc != 0 || (http && !idem_http_cacheable(http, resp->status)))
	{
		idem_outcome rel = IDEM_NOT_FOUND;
		char		note[512];

		/* in a block of our own, its rollback drops the reservation */
		if (block)
		{
			rel = end_block(conn, 0) == 0 ? IDEM_FRESH : IDEM_ERROR;
			if (rel == IDEM_FRESH)
				conn->stats.releases++;
		}
		else if (!lost)
			rel = idem_release(conn, key, opts);
		snprintf(note, sizeof(note), "%s%.400s",
				 lost ? "; the lease had been lost: another caller took "
				 "the key over" : rel == IDEM_ERROR ?
				 "; releasing the key failed: " : "",
				 rel == IDEM_ERROR ? conn->errmsg : "");
		if (rc != 0)
		{
			idem_response_free(resp);
			return idem__fail(conn, IDEM_ERR_HANDLER,
							  "handler failed (returned %d); the key was "
							  "released so that a retry runs it again%s",
							  rc, note);
		}
		/* served, not stored: a retry runs the handler again */
		idem__clear_error(conn);
		*out = idem__record_from_response(resp, "released");
		idem_response_free(resp);
		return *out ? IDEM_FRESH : nomem(conn);
	}

	if (lost)
	{
		idem_response_free(resp);
		return lease_lost(conn, key, why);
	}
	/*
	 * COMMIT goes with the commit, unless the reservation is lease-owned:
	 * a lease lost makes the commit refused or a replay, after which the
	 * block must roll back, as the handler's work is not to be kept.
	 */
	conn->commit_next = block && !leased;
	o = commit_response(conn, key, opts, resp, block);
	conn->commit_next = 0;
	if (block && leased && o == IDEM_FRESH && end_block(conn, 1) < 0)
	{
		/* stored, then gone with the block */
		idem_response_free(resp);
		conn->stats.commits--;
		conn->stats.errors++;
		return IDEM_ERROR;
	}
	if (leased && (o == IDEM_LEASE_LOST || o == IDEM_REPLAY))
	{
		/*
		 * Refused (fenced), or committed by someone else: nobody but the
		 * owner of a live lease can commit, so ours ran out and was taken
		 * over while the handler ran.
		 */
		idem_response_free(resp);
		if (block)
			end_block(conn, 0);
		return lease_lost(conn, key, NULL);
	}
	if (o == IDEM_FRESH)
	{
		*out = idem__record_from_response(resp, "committed");
		idem_response_free(resp);
		return *out ? IDEM_FRESH : nomem(conn);
	}
	idem_response_free(resp);
	if (o == IDEM_REPLAY)
	{
		/*
		 * Someone committed first (our session was taken over while the
		 * handler ran): what is stored is what every caller gets.
		 */
		o = idem_get(conn, key, opts, out);
		if (o == IDEM_REPLAY)
			(*out)->fresh = 1;
		return o == IDEM_REPLAY ? IDEM_FRESH : o;
	}
	else
	{
		/* the handler ran, its response could not be stored */
		saved_error saved;

		save_error(conn, &saved);
		if (block)
			end_block(conn, 0);
		else if (idem_connected(conn))
			idem_release(conn, key, opts);
		restore_error(conn, &saved);
		if (o != IDEM_ERROR)
			conn->stats.errors++;
		return IDEM_ERROR;
	}
}

/*
 * Ends the event of a runner: what it returned (*out, and its status or
 * the HTTP status when http_status >= 0) on top of what its reserve told
 * (attempt, waited, leased).
 */
static void
end_runner(idem_conn *conn, idem_call *call, idem_op op, idem_outcome o,
		   const char *key, const char *scope, const idem_record *out,
		   int http_status)
{
	int			attempt = call->attempt;

	idem__call_record(call, out);
	if (call->attempt == 0)
		call->attempt = attempt;
	if (http_status >= 0)
		call->status = http_status;
	idem__call_end(conn, call, op, o, key, scope);
}

static idem_outcome
run_call(idem_conn *conn, const char *key, const idem_opts *opts,
		 idem_handler_fn handler, void *arg, idem_record **out,
		 idem_call *call)
{
	*out = NULL;
	idem__clear_error(conn);
	if (handler == NULL)
		return idem__fail(conn, IDEM_ERR_BAD_INPUT, "handler must not be NULL");
	return run_guarded(conn, key, opts, NULL, conn->transaction, handler,
					   arg, out, call);
}

idem_outcome
idem_run(idem_conn *conn, const char *key, const idem_opts *opts,
		 idem_handler_fn handler, void *arg, idem_record **out)
{
	idem_call	call;
	idem_outcome o;

	if (conn->observer == NULL)
		return run_call(conn, key, opts, handler, arg, out, NULL);
	idem__call_begin(&call);
	o = run_call(conn, key, opts, handler, arg, out, &call);
	end_runner(conn, &call, IDEM_OP_RUN, o, key, opts ? opts->scope : NULL,
			   *out, -1);
	return o;
}

/* idem_step, with the key it derived in key ("" without a run id) */
static idem_outcome
step_call(idem_conn *conn, const char *step, const idem_opts *opts,
		  idem_handler_fn step_fn, void *arg, idem_record **out,
		  char key[IDEM_HASH_SIZE], idem_call *call)
{
	idem_opts	o = {NULL, NULL, NULL, NULL};

	*out = NULL;
	key[0] = '\0';
	if (idem_step_key(conn, step, key) < 0)
	{
		key[0] = '\0';
		conn->stats.errors++;
		return IDEM_ERROR;
	}
	if (step_fn == NULL)
		return idem__fail(conn, IDEM_ERR_BAD_INPUT, "step function must not be NULL");
	if (opts)
	{
		o.scope = opts->scope;
		o.ttl = opts->ttl;
		o.wait = opts->wait;
	}
	return run_guarded(conn, key, &o, NULL, 0, step_fn, arg, out, call);
}

idem_outcome
idem_step(idem_conn *conn, const char *step, const idem_opts *opts,
		  idem_handler_fn step_fn, void *arg, idem_record **out)
{
	char		key[IDEM_HASH_SIZE];
	idem_call	call;
	idem_outcome o;

	if (conn->observer == NULL)
		return step_call(conn, step, opts, step_fn, arg, out, key, NULL);
	idem__call_begin(&call);
	o = step_call(conn, step, opts, step_fn, arg, out, key, &call);
	end_runner(conn, &call, IDEM_OP_STEP, o, key[0] ? key : NULL,
			   opts ? opts->scope : NULL, *out, -1);
	return o;
}

/* ---- HTTP -------------------------------------------------------------- */

idem_http *
idem_http_new(void)
{
	idem_http  *http = calloc(1, sizeof(idem_http));

	if (http == NULL)
		return NULL;
	http->header_name = idem__strdup("Idempotency-Key");
	if (http->header_name == NULL)
	{
		free(http);
		return NULL;
	}
	return http;
}

void
idem_http_free(idem_http *http)
{
	size_t		i;

	if (http == NULL)
		return;
	for (i = 0; i < http->nexcl; i++)
	{
		free(http->excl[i].method);
		free(http->excl[i].path);
	}
	free(http->excl);
	free(http->header_name);
	free(http->ttl);
	free(http->wait);
	free(http);
}

/* replaces *dst by a copy of src (NULL allowed); 0 or -1 */
static int
replace_string(char **dst, const char *src)
{
	char	   *copy = NULL;

	if (src && (copy = idem__strdup(src)) == NULL)
		return -1;
	free(*dst);
	*dst = copy;
	return 0;
}

int
idem_http_set_header_name(idem_http *http, const char *name)
{
	if (name == NULL || *name == '\0')
		return -1;
	return replace_string(&http->header_name, name);
}

void
idem_http_set_required(idem_http *http, int required)
{
	http->required = required != 0;
}

void
idem_http_set_cache_failures(idem_http *http, int cache)
{
	http->cache_failures = cache != 0;
}

int
idem_http_set_ttl(idem_http *http, const char *ttl)
{
	return replace_string(&http->ttl, ttl);
}

int
idem_http_set_wait(idem_http *http, const char *wait)
{
	return replace_string(&http->wait, wait);
}

int
idem_http_exclude(idem_http *http, const char *rule)
{
	const char *space;
	const char *path;
	size_t		mlen,
				plen;
	idem_exclusion *grown;
	idem_exclusion *e;
	size_t		i;

	if (rule == NULL)
		return -1;
	space = strchr(rule, ' ');
	if (space == NULL || space == rule)
		return -1;
	mlen = (size_t) (space - rule);
	path = space;
	while (*path == ' ')
		path++;
	plen = strlen(path);
	while (plen > 0 && path[plen - 1] == ' ')
		plen--;
	if (plen == 0 || path[0] != '/' || memchr(path, ' ', plen))
		return -1;
	for (i = 0; i < mlen; i++)
		if (!(rule[i] >= 'A' && rule[i] <= 'Z') &&
			!(rule[i] >= 'a' && rule[i] <= 'z') && !(mlen == 1 && rule[i] == '*'))
			return -1;

	grown = realloc(http->excl, (http->nexcl + 1) * sizeof(idem_exclusion));
	if (grown == NULL)
		return -1;
	http->excl = grown;
	e = &http->excl[http->nexcl];
	e->prefix = path[plen - 1] == '*';
	if (e->prefix)
		plen--;
	e->method = malloc(mlen + 1);
	e->path = malloc(plen + 1);
	if (e->method == NULL || e->path == NULL)
	{
		free(e->method);
		free(e->path);
		return -1;
	}
	memcpy(e->method, rule, mlen);
	e->method[mlen] = '\0';
	memcpy(e->path, path, plen);
	e->path[plen] = '\0';
	http->nexcl++;
	return 0;
}

static int
guarded_method(const char *method)
{
	return idem__strcaseeq(method, "POST") || idem__strcaseeq(method, "PUT") ||
		idem__strcaseeq(method, "PATCH") || idem__strcaseeq(method, "DELETE");
}

static int
excluded(const idem_http *http, const char *method, const char *path)
{
	size_t		plen = strcspn(path, "?#");
	size_t		i;

	for (i = 0; i < http->nexcl; i++)
	{
		const idem_exclusion *e = &http->excl[i];
		size_t		elen = strlen(e->path);

		if (strcmp(e->method, "*") != 0 && !idem__strcaseeq(e->method, method))
			continue;
		if (e->prefix ? (plen >= elen && memcmp(path, e->path, elen) == 0) :
			(plen == elen && memcmp(path, e->path, elen) == 0))
			return 1;
	}
	return 0;
}

idem_http_action
idem_http_decide(const idem_http *http, const idem_http_request *req,
				 const char **key, int *status, const char **reason)
{
	const char *value = NULL;
	const char *why;
	idem_http_action action;
	size_t		i;

	if (key)
		*key = NULL;
	if (status)
		*status = 0;
	if (req->method == NULL || !guarded_method(req->method))
	{
		action = IDEM_HTTP_BYPASS;
		why = "method not guarded";
		goto done;
	}
	if (req->path && excluded(http, req->method, req->path))
	{
		action = IDEM_HTTP_BYPASS;
		why = "route excluded";
		goto done;
	}
	for (i = 0; i < req->nheaders && req->headers; i++)
		if (req->headers[i].name &&
			idem__strcaseeq(req->headers[i].name, http->header_name))
		{
			value = req->headers[i].value;
			break;
		}
	if (value == NULL)
	{
		action = http->required ? IDEM_HTTP_REJECT : IDEM_HTTP_BYPASS;
		why = http->required ? "idempotency key header required" :
			"no idempotency key header";
		goto done;
	}
	if (*value == '\0')
	{
		action = IDEM_HTTP_REJECT;
		why = "idempotency key is empty";
		goto done;
	}
	if (strlen(value) > IDEM_MAX_KEY_BYTES)
	{
		action = IDEM_HTTP_REJECT;
		why = "idempotency key longer than 255 bytes";
		goto done;
	}
	if (req->path == NULL)
	{
		action = IDEM_HTTP_REJECT;
		why = "request without a path";
		goto done;
	}
	action = IDEM_HTTP_GUARD;
	why = "guarded";
	if (key)
		*key = value;
done:
	if (action == IDEM_HTTP_REJECT && status)
		*status = 400;
	if (reason)
		*reason = why;
	return action;
}

int
idem_http_cacheable(const idem_http *http, int status)
{
	if (http->cache_failures)
		return 1;
	return !(status >= 500 && status <= 599) && status != 429;
}

int
idem_http_error_status(idem_outcome outcome, idem_error err)
{
	switch (outcome)
	{
		case IDEM_FRESH:
		case IDEM_REPLAY:
			return 0;
		case IDEM_MISMATCH:
			return 422;
		case IDEM_IN_FLIGHT:
		case IDEM_LEASE_LOST:
			return 409;
		case IDEM_NOT_FOUND:
		case IDEM_ERROR:
			break;
	}
	switch (err)
	{
		case IDEM_ERR_BAD_INPUT:
			return 400;
		case IDEM_ERR_CONNECTION:
		case IDEM_ERR_READ_ONLY:
			return 503;
		default:
			return 500;
	}
}

static idem_outcome
http_run_call(idem_conn *conn, const idem_http *http,
			  const idem_http_request *req, idem_handler_fn handler,
			  void *arg, idem_record **out, int *status, idem_call *call)
{
	const char *key = NULL;
	const char *reason = NULL;
	char		hash[IDEM_HASH_SIZE];
	idem_opts	opts;
	idem_outcome o;

	*out = NULL;
	*status = 500;
	idem__clear_error(conn);
	if (handler == NULL)
		return idem__fail(conn, IDEM_ERR_BAD_INPUT, "handler must not be NULL");

	switch (idem_http_decide(http, req, &key, status, &reason))
	{
		case IDEM_HTTP_REJECT:
			return idem__fail(conn, IDEM_ERR_BAD_INPUT, "%s", reason);
		case IDEM_HTTP_BYPASS:
			{
				idem_response *resp = idem_response_new();
				int			rc;
				int			block;

				if (resp == NULL)
				{
					*status = 500;
					return nomem(conn);
				}
				resp->status = 200;
				block = conn->transaction && conn->pg &&
					PQtransactionStatus(conn->pg) == PQTRANS_IDLE;
				if (block && begin_block(conn) < 0)
				{
					idem_response_free(resp);
					*status = idem_http_error_status(IDEM_ERROR, conn->err);
					return idem__outcome_of(conn);
				}
				conn->stats.handler_runs++;
				rc = handler(resp, arg);
				if (block &&
					end_block(conn, rc == 0 &&
							  idem_http_cacheable(http, resp->status)) < 0)
				{
					idem_response_free(resp);
					*status = idem_http_error_status(IDEM_ERROR, conn->err);
					return idem__outcome_of(conn);
				}
				if (rc != 0)
				{
					idem_response_free(resp);
					*status = 500;
					return idem__fail(conn, IDEM_ERR_HANDLER,
									  "handler failed (returned %d)", rc);
				}
				*out = idem__record_from_response(resp, "bypassed");
				idem_response_free(resp);
				if (*out == NULL)
				{
					*status = 500;
					return nomem(conn);
				}
				*status = (*out)->status;
				return IDEM_FRESH;
			}
		case IDEM_HTTP_GUARD:
			break;
	}

	if (idem_request_hash(hash, req->method, req->path, req->body,
						  req->body_len) < 0)
	{
		*status = 500;
		return idem__fail(conn, IDEM_ERR_NOMEM, "could not compute SHA-256");
	}
	opts.scope = req->scope;
	opts.request_hash = hash;
	opts.ttl = http->ttl;
	opts.wait = http->wait;
	o = run_guarded(conn, key, &opts, http, conn->transaction, handler, arg,
					out, call);
	*status = (o == IDEM_FRESH || o == IDEM_REPLAY) ?
		(*out)->status : idem_http_error_status(o, conn->err);
	return o;
}

/* ---- problem details (RFC 9457) ---------------------------------------- */

/*
 * A problem type: its name after IDEM_HTTP_PROBLEM_BASE, its title, and
 * its detail, where %k stands for the key phrase (Idempotency-Key "KEY",
 * or "this Idempotency-Key" without a key).  Titles and details are ASCII
 * without quotes or backslashes: they go out as they are.
 */
typedef struct problem
{
	const char *type;
	const char *title;
	const char *detail;
} problem;

static const problem missing_key = {
	"missing-key", "Idempotency-Key is missing",
	"This operation is idempotent and needs an Idempotency-Key header of 1 "
	"to 255 bytes."
};
static const problem empty_key = {
	"invalid-key", "Idempotency-Key is invalid",
	"The Idempotency-Key header is empty; send a key of 1 to 255 bytes."
};
static const problem long_key = {
	"invalid-key", "Idempotency-Key is invalid",
	"%k is longer than 255 bytes; send a key of 1 to 255 bytes."
};
static const problem bad_key = {
	"invalid-key", "Idempotency-Key is invalid",
	"%k was refused as bad input; send a key of 1 to 255 bytes."
};
static const problem in_flight = {
	"in-flight", "A request is outstanding for this Idempotency-Key",
	"A request with %k is still being processed; retry later to get its "
	"response."
};
static const problem lease_lost_problem = {
	"lease-lost", "Another request took over this Idempotency-Key",
	"The request with %k ran past its lease and another request took the "
	"key over; retry to get that request's response."
};
static const problem key_reused = {
	"key-reused", "Idempotency-Key is already used",
	"A request with %k was already made with another method, path or body; "
	"a new request needs a new key."
};
static const problem store_unavailable = {
	"store-unavailable", "The idempotency store is unavailable",
	"The database that keeps the idempotency keys is unreachable or "
	"read-only; retry the request with %k later: with the same key it runs "
	"at most once."
};
static const problem handler_failed = {
	"handler-failed", "The request failed",
	"The request with %k failed; its key was released, so that a retry runs "
	"it again."
};
static const problem store_failed = {
	"store-failed", "The idempotency store failed",
	"The idempotency store failed on the request with %k; retry with the "
	"same key."
};

/* keys longer than IDEM_MAX_KEY_BYTES are shown by this many bytes */
#define PROBLEM_KEY_PREFIX 64

/*
 * Output of bounded size that counts what it would have written, so that
 * the caller learns the length it needs.
 */
typedef struct outbuf
{
	char	   *buf;
	size_t		size;
	size_t		len;
} outbuf;

static void
out_put(outbuf *o, const char *s, size_t n)
{
	if (o->len < o->size && o->size - o->len > n)
		memcpy(o->buf + o->len, s, n);
	o->len += n;
}

static void
out_puts(outbuf *o, const char *s)
{
	out_put(o, s, strlen(s));
}

static void
out_u16(outbuf *o, unsigned cp)
{
	char		esc[8];

	snprintf(esc, sizeof(esc), "\\u%04x", cp & 0xffffu);
	out_put(o, esc, 6);
}

/*
 * The length of the UTF-8 sequence at s (at most n bytes) and its code
 * point in *cp; 0 when the bytes there are not valid UTF-8 (overlong
 * forms, surrogates and values beyond U+10FFFF are not).
 */
static size_t
utf8_char(const unsigned char *s, size_t n, unsigned *cp)
{
	size_t		len,
				i;
	unsigned	c = s[0];
	unsigned	lo = 0x80,
				hi = 0xbf;

	if (c >= 0xc2 && c <= 0xdf)
		len = 2, *cp = c & 0x1f;
	else if (c >= 0xe0 && c <= 0xef)
	{
		len = 3, *cp = c & 0x0f;
		if (c == 0xe0)
			lo = 0xa0;			/* overlong */
		else if (c == 0xed)
			hi = 0x9f;			/* surrogates */
	}
	else if (c >= 0xf0 && c <= 0xf4)
	{
		len = 4, *cp = c & 0x07;
		if (c == 0xf0)
			lo = 0x90;			/* overlong */
		else if (c == 0xf4)
			hi = 0x8f;			/* beyond U+10FFFF */
	}
	else
		return 0;
	if (n < len)
		return 0;
	for (i = 1; i < len; i++)
	{
		unsigned	b = s[i];

		if (b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xbf))
			return 0;
		*cp = (*cp << 6) | (b & 0x3f);
	}
	return len;
}

/*
 * n bytes of s inside a JSON string: quotes, backslashes and control
 * characters escaped, everything beyond ASCII as \uXXXX (UTF-16 pairs
 * beyond U+FFFF), bytes that are not valid UTF-8 as U+FFFD: the output is
 * ASCII, valid JSON whatever s holds.
 */
static void
out_json_chars(outbuf *o, const char *str, size_t n)
{
	const unsigned char *s = (const unsigned char *) str;
	size_t		i = 0;

	while (i < n)
	{
		unsigned	c = s[i];
		unsigned	cp;
		size_t		len;

		if (c >= 0x80)
		{
			len = utf8_char(s + i, n - i, &cp);
			if (len == 0)
			{
				out_u16(o, 0xfffd);
				i++;
				continue;
			}
			if (cp >= 0x10000)
			{
				out_u16(o, 0xd800 + ((cp - 0x10000) >> 10));
				out_u16(o, 0xdc00 + ((cp - 0x10000) & 0x3ff));
			}
			else
				out_u16(o, cp);
			i += len;
			continue;
		}
		switch (c)
		{
			case '"':
				out_puts(o, "\\\"");
				break;
			case '\\':
				out_puts(o, "\\\\");
				break;
			case '\b':
				out_puts(o, "\\b");
				break;
			case '\f':
				out_puts(o, "\\f");
				break;
			case '\n':
				out_puts(o, "\\n");
				break;
			case '\r':
				out_puts(o, "\\r");
				break;
			case '\t':
				out_puts(o, "\\t");
				break;
			default:
				if (c < 0x20 || c == 0x7f)
					out_u16(o, c);
				else
					out_put(o, (const char *) s + i, 1);
		}
		i++;
	}
}

/* the problem of an answer, by outcome, then the error, then the status */
static const problem *
problem_of(idem_outcome outcome, idem_error err, int status, const char *key)
{
	switch (outcome)
	{
		case IDEM_FRESH:
		case IDEM_REPLAY:
			return NULL;
		case IDEM_MISMATCH:
			return &key_reused;
		case IDEM_IN_FLIGHT:
			return &in_flight;
		case IDEM_LEASE_LOST:
			return &lease_lost_problem;
		case IDEM_NOT_FOUND:
		case IDEM_ERROR:
			break;
	}
	switch (err)
	{
		case IDEM_ERR_LEASE_LOST:
			return &lease_lost_problem;
		case IDEM_ERR_CONNECTION:
		case IDEM_ERR_READ_ONLY:
			return &store_unavailable;
		case IDEM_ERR_HANDLER:
			return &handler_failed;
		case IDEM_ERR_BAD_INPUT:
			break;
		default:
			if (status == 503)
				return &store_unavailable;
			if (status != 400)
				return &store_failed;
			break;
	}
	if (key == NULL)
		return &missing_key;
	if (*key == '\0')
		return &empty_key;
	if (strlen(key) > IDEM_MAX_KEY_BYTES)
		return &long_key;
	return &bad_key;
}

int
idem_http_problem_json(idem_outcome outcome, idem_error err, int status,
					   const char *key, char *buf, size_t size)
{
	const problem *p;
	outbuf		o = {buf, size, 0};
	char		num[16];
	const char *d;

	if (buf && size > 0)
		buf[0] = '\0';
	if (status == 0)
		status = idem_http_error_status(outcome, err);
	p = problem_of(outcome, err, status, key);
	if (p == NULL)
		return -1;

	out_puts(&o, "{\"type\": \"" IDEM_HTTP_PROBLEM_BASE);
	out_puts(&o, p->type);
	out_puts(&o, "\", \"title\": \"");
	out_puts(&o, p->title);
	snprintf(num, sizeof(num), "%d", status);
	out_puts(&o, "\", \"status\": ");
	out_puts(&o, num);
	out_puts(&o, ", \"detail\": \"");
	for (d = p->detail; *d; d++)
	{
		const char *mark = strstr(d, "%k");
		size_t		klen;

		if (mark == NULL)
		{
			out_puts(&o, d);
			break;
		}
		out_put(&o, d, (size_t) (mark - d));
		d = mark + 1;
		if (key == NULL)
		{
			out_puts(&o, "this Idempotency-Key");
			continue;
		}
		klen = strlen(key);
		out_puts(&o, "Idempotency-Key \\\"");
		if (klen > IDEM_MAX_KEY_BYTES)
		{
			/* a prefix, cut before a character's continuation bytes */
			klen = PROBLEM_KEY_PREFIX;
			while (klen > 0 && ((unsigned char) key[klen] & 0xc0) == 0x80)
				klen--;
			out_json_chars(&o, key, klen);
			out_puts(&o, "...");
		}
		else
			out_json_chars(&o, key, klen);
		out_puts(&o, "\\\"");
	}
	out_puts(&o, "\"}");

	if (o.len >= size)
	{
		if (buf && size > 0)
			buf[0] = '\0';
		return (int) o.len;
	}
	buf[o.len] = '\0';
	return (int) o.len;
}

/* ---- content negotiation ----------------------------------------------- */

static int
is_ows(char c)
{
	return c == ' ' || c == '\t';
}

/* [s, e) without leading and trailing spaces and tabs */
static void
trim(const char **s, const char **e)
{
	while (*s < *e && is_ows(**s))
		(*s)++;
	while (*e > *s && is_ows((*e)[-1]))
		(*e)--;
}

/* where the next c outside a quoted string is in [s, e), or e */
static const char *
next_unquoted(const char *s, const char *e, char c)
{
	int			quoted = 0;

	for (; s < e; s++)
	{
		if (quoted && *s == '\\' && s + 1 < e)
			s++;
		else if (*s == '"')
			quoted = !quoted;
		else if (!quoted && *s == c)
			return s;
	}
	return e;
}

static int
span_caseeq(const char *s, const char *e, const char *word)
{
	size_t		n = strlen(word);
	size_t		i;

	if ((size_t) (e - s) != n)
		return 0;
	for (i = 0; i < n; i++)
		if (tolower((unsigned char) s[i]) != tolower((unsigned char) word[i]))
			return 0;
	return 1;
}

/* a qvalue of zero: "0", "0.", "0.0", "0.00", "0.000" */
static int
zero_qvalue(const char *s, const char *e)
{
	if (s == e || *s != '0')
		return 0;
	for (s++; s < e && *s == '.'; s++)
		;
	for (; s < e; s++)
		if (*s != '0')
			return 0;
	return 1;
}

/*
 * 1 when the media range [s, e) is application/problem+json with a
 * q-value other than 0 (the other parameters are ignored).
 */
static int
range_is_problem(const char *s, const char *e)
{
	const char *semi = next_unquoted(s, e, ';');
	const char *te = semi;

	trim(&s, &te);
	if (!span_caseeq(s, te, "application/problem+json"))
		return 0;
	while (semi < e)
	{
		const char *ps = semi + 1;
		const char *pe;

		semi = next_unquoted(ps, e, ';');
		pe = semi;
		trim(&ps, &pe);
		if (pe - ps >= 2 && (ps[0] == 'q' || ps[0] == 'Q') && ps[1] == '=' &&
			zero_qvalue(ps + 2, pe))
			return 0;
	}
	return 1;
}

int
idem_http_wants_problem(const idem_http_request *req)
{
	size_t		i;

	for (i = 0; i < req->nheaders && req->headers; i++)
	{
		const char *s = req->headers[i].value;
		const char *end;

		if (req->headers[i].name == NULL || s == NULL ||
			!idem__strcaseeq(req->headers[i].name, "Accept"))
			continue;
		end = s + strlen(s);
		while (s < end)
		{
			const char *comma = next_unquoted(s, end, ',');

			if (range_is_problem(s, comma))
				return 1;
			s = comma < end ? comma + 1 : end;
		}
	}
	return 0;
}

/* the value of the policy's key header in req, or NULL */
static const char *
key_header(const idem_http *http, const idem_http_request *req)
{
	size_t		i;

	for (i = 0; i < req->nheaders && req->headers; i++)
		if (req->headers[i].name &&
			idem__strcaseeq(req->headers[i].name, http->header_name))
			return req->headers[i].value;
	return NULL;
}

idem_outcome
idem_http_run(idem_conn *conn, const idem_http *http,
			  const idem_http_request *req, idem_handler_fn handler,
			  void *arg, idem_record **out, int *status)
{
	idem_call	call;
	idem_outcome o;

	if (conn->observer == NULL)
		return http_run_call(conn, http, req, handler, arg, out, status,
							 NULL);
	idem__call_begin(&call);
	o = http_run_call(conn, http, req, handler, arg, out, status, &call);
	end_runner(conn, &call, IDEM_OP_HTTP_RUN, o, key_header(http, req),
			   req->scope, *out, *status);
	return o;
}
