/*
 * routes.c: the HTTP example's routes, run by the workers.
 *
 *   POST /charges, POST /charges-unprotected   charge_create
 *   POST /emails                                email_send, whose durable
 *                                               step calls the mail API
 *   GET  /charges/{id}                          charge_get
 *
 * A request is matched to its route, its tenant resolved, its body
 * validated (400 before the key is looked at), then run through libidem's
 * HTTP helper (idem_http_run) in the worker's session.  Bodies are read
 * and written with json-c (jsonout.h); the mail API is called with
 * libcurl.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "jsonout.h"
#include "service.h"

#define MAX_MAIL_RESPONSE (256 * 1024)
#define MAIL_TIMEOUT_S 10		/* to connect, and without progress */

typedef enum route
{
	ROUTE_CHARGE_CREATE,
	ROUTE_CHARGE_UNPROTECTED,
	ROUTE_CHARGE_GET,
	ROUTE_EMAIL
} route;

/* everything a handler needs: passed as the handler's arg */
typedef struct call
{
	job		   *j;
	worker	   *w;
	route		route;
	idem_handler_fn handler;
	const char *tenant;
	json_object *json;			/* the request's body, when a POST */

	/* request fields (pointing into json) */
	long long	amount;
	char		currency[4];
	const char *description;
	const char *card;
	int			remember;
	const char *to;
	const char *subject;
	const char *text;
	long long	charge_id;

	/* test hooks */
	long		sleep_ms;
	const char *sleep_at;
	int			forced_status;
	int			handler_fails;

	/* what the handler did */
	int			ran;
	char		set_cookie[128];	/* for this client only: never stored */
	char		authorization[128];
	char		step_key[IDEM_HASH_SIZE];
} call;

static const char *const allow_post[] = {"Allow", "POST", NULL};
static const char *const allow_get[] = {"Allow", "GET", NULL};
static const char *const retry_after[] = {"Retry-After", "1", NULL};

static void
sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void
test_sleep(call *c, const char *where)
{
	if (c->sleep_ms <= 0)
		return;
	logf_("test hook: sleeping %ld ms %s (pid %d)", c->sleep_ms, where, (int) getpid());
	sleep_ms(c->sleep_ms);
}

static void
random_token(char *out, size_t outlen, const char *prefix)
{
	static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
	unsigned char raw[16];
	size_t		i,
				n;
	FILE	   *f = fopen("/dev/urandom", "rb");

	if (f == NULL || fread(raw, 1, sizeof(raw), f) != sizeof(raw))
	{
		struct timeval tv;

		gettimeofday(&tv, NULL);
		for (i = 0; i < sizeof(raw); i++)
			raw[i] = (unsigned char) ((tv.tv_usec >> (i % 8)) ^ (i * 131) ^ rand());
	}
	if (f)
		fclose(f);
	n = (size_t) snprintf(out, outlen, "%s", prefix);
	for (i = 0; i < sizeof(raw) && n + 1 < outlen; i++, n++)
		out[n] = digits[raw[i] % 36];
	out[n < outlen ? n : outlen - 1] = '\0';
}

/* the response's body: obj's text, then obj freed; -1 when out of memory */
static int
set_json_body(idem_response *resp, json_object *obj)
{
	size_t		len;
	char	   *text = jo_text(obj, &len);
	int			rc;

	json_object_put(obj);
	if (text == NULL)
		return -1;
	idem_response_add_header(resp, "Content-Type", "application/json");
	rc = idem_response_set_body(resp, text, len);
	free(text);
	return rc;
}

static int
set_error(idem_response *resp, int status, const char *type, const char *code,
		  const char *message)
{
	size_t		len;
	char	   *text = error_body(type, code, message, &len);
	int			rc;

	idem_response_set_status(resp, status);
	idem_response_add_header(resp, "Content-Type", "application/json");
	if (text == NULL)
		return -1;
	rc = idem_response_set_body(resp, text, len);
	free(text);
	return rc;
}

static json_object *
charge_json(const charge_row *row, const char *tenant)
{
	json_object *obj = jo_new();
	char		id[40];

	snprintf(id, sizeof(id), "ch_%lld", row->id);
	jo_add_string(obj, "id", id);
	jo_add_string(obj, "object", "charge");
	jo_add_string(obj, "tenant", tenant);
	jo_add_int(obj, "amount", row->amount);
	jo_add_string(obj, "currency", row->currency);
	jo_add_string(obj, "description", row->description);
	jo_add_int(obj, "created", row->created);
	jo_add_string(obj, "status", "succeeded");
	return obj;
}

/* ---- handlers (the side effects) ---------------------------------------- */

/* what the charge handler adds for the one client whose request ran it */
static void
remember_client(call *c, idem_response *resp)
{
	char		tok[64];

	random_token(tok, sizeof(tok), "sid_");
	snprintf(c->set_cookie, sizeof(c->set_cookie),
			 "session=%s; Path=/; HttpOnly; SameSite=Strict", tok);
	random_token(tok, sizeof(tok), "tok_");
	snprintf(c->authorization, sizeof(c->authorization), "Bearer %s", tok);
	/* also given to the library, which drops them: shown for the record */
	idem_response_add_header(resp, "Set-Cookie", c->set_cookie);
	idem_response_add_header(resp, "Authorization", c->authorization);
}

/*
 * POST /charges and POST /charges-unprotected: insert the charge.  It runs
 * inside the transaction libidem's runner opened with the reservation
 * (run_request): the row, the reservation and the stored response commit
 * or roll back together.
 */
static int
charge_create(idem_response *resp, void *arg)
{
	call	   *c = arg;
	charge_row	row = {0};
	json_object *obj;
	char		loc[64];

	c->ran = 1;
	if (c->card && strcmp(c->card, "tok_chargeDeclined") == 0)
		/* a 4xx the handler decided: stored and replayed like a success */
		return set_error(resp, 402, "card_error", "card_declined",
						 "Your card was declined.");

	row.amount = c->amount;
	memcpy(row.currency, c->currency, sizeof(c->currency));
	row.description = (char *) c->description;
	/* the key is NULL when unprotected */
	if (db_insert_charge(c->w, c->tenant, idem_response_key(resp), &row) < 0)
		/* 500: not stored, the transaction rolls back, a retry runs again */
		return set_error(resp, 500, "api_error", NULL, "could not record the charge");
	obj = charge_json(&row, c->tenant);

	test_sleep(c, "in the charge handler, after the insert");
	if (c->handler_fails || c->forced_status)
	{
		json_object_put(obj);
		/* a failure not to be cached: the key is released, the insert
		 * rolls back, and the helper answers 500 */
		if (c->handler_fails)
			return 1;
		return set_error(resp, c->forced_status, "api_error", "test_failure",
						 "failure forced by X-Test-Status");
	}
	if (c->remember)
		remember_client(c, resp);	/* per-client secrets, never stored */

	idem_response_set_status(resp, 201);
	snprintf(loc, sizeof(loc), "/charges/ch_%lld", row.id);
	idem_response_add_header(resp, "Location", loc);
	return set_json_body(resp, obj);
}

/* GET /charges/{id}: not guarded, runs as is */
static int
charge_get(idem_response *resp, void *arg)
{
	call	   *c = arg;
	charge_row	row = {0};
	int			found;

	c->ran = 1;
	row.id = c->charge_id;
	found = db_read_charge(c->w, c->tenant, &row);
	if (found < 0)
		return set_error(resp, 500, "api_error", NULL, "could not read the charge");
	if (found == 0)
		return set_error(resp, 404, "invalid_request_error", "resource_missing",
						 "No such charge.");
	idem_response_set_status(resp, 200);
	found = set_json_body(resp, charge_json(&row, c->tenant));
	free(row.description);
	return found;
}

/* ---- the mail API (libcurl) ------------------------------------------------ */

typedef struct mail_answer
{
	char	   *data;
	size_t		len;
	int			too_large;
} mail_answer;

int
mail_init(void)
{
	return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

void
mail_cleanup(void)
{
	curl_global_cleanup();
}

static size_t
keep_answer(char *data, size_t size, size_t nmemb, void *arg)
{
	mail_answer *a = arg;
	size_t		n = size * nmemb;
	char	   *nb;

	if (a->len + n > MAX_MAIL_RESPONSE)
	{
		a->too_large = 1;
		return 0;				/* ends the transfer */
	}
	nb = realloc(a->data, a->len + n + 1);
	if (nb == NULL)
		return 0;
	memcpy(nb + a->len, data, n);
	a->data = nb;
	a->len += n;
	a->data[a->len] = '\0';
	return n;
}

/*
 * POST payload to the mail API's path with an Idempotency-Key and read the
 * whole answer.  Returns the status and fills answer, or -1 with errbuf
 * set.
 */
static int
mail_post(const char *path, const char *idem_key, const char *payload,
		  mail_answer *answer, char *errbuf, size_t errlen)
{
	CURL	   *curl = curl_easy_init();
	struct curl_slist *headers = NULL;
	char		url[512];
	char		keyhdr[IDEM_HASH_SIZE + 32];
	char		curl_err[CURL_ERROR_SIZE] = "";
	CURLcode	rc;
	long		status = -1;

	if (curl == NULL)
	{
		snprintf(errbuf, errlen, "out of memory");
		return -1;
	}
	/* an IPv6 address goes in brackets */
	snprintf(url, sizeof(url), strchr(cfg.mail_host, ':') ? "http://[%s]:%s%s" :
			 "http://%s:%s%s", cfg.mail_host, cfg.mail_port, path);
	snprintf(keyhdr, sizeof(keyhdr), "Idempotency-Key: %s", idem_key);
	headers = curl_slist_append(headers, "Content-Type: application/json");
	headers = curl_slist_append(headers, keyhdr);
	headers = curl_slist_append(headers, "Expect:");
	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(curl, CURLOPT_POSTFIELDS, payload);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, (long) MAIL_TIMEOUT_S);
	curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, (long) MAIL_TIMEOUT_S);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, keep_answer);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, answer);
	curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_err);
	rc = headers ? curl_easy_perform(curl) : CURLE_OUT_OF_MEMORY;
	if (rc == CURLE_OK)
		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
	else if (answer->too_large)
		snprintf(errbuf, errlen, "the mail API's answer is too large");
	else
		snprintf(errbuf, errlen, "%.100s: %.140s", url,
				 curl_err[0] ? curl_err : curl_easy_strerror(rc));
	curl_slist_free_all(headers);
	curl_easy_cleanup(curl);
	return rc == CURLE_OK ? (int) status : -1;
}

/*
 * The durable step of POST /emails: call the mail API with the step's
 * derived key as its Idempotency-Key and store its answer.  If the process
 * dies after the call and before the step's commit, the retry calls again
 * with the same key and the mail API does not send twice; once the step is
 * committed, a retry does not call at all.
 */
static int
send_step(idem_response *resp, void *arg)
{
	call	   *c = arg;
	json_object *mail = jo_new();
	mail_answer answer = {0};
	size_t		len;
	char	   *payload;
	char		err[256];
	int			status;

	jo_add_string(mail, "to", c->to);
	jo_add_string(mail, "subject", c->subject);
	jo_add_string(mail, "text", c->text ? c->text : "");
	payload = jo_text(mail, &len);
	json_object_put(mail);
	if (payload == NULL)
		return -1;
	payload[len - 1] = '\0';	/* no newline in the request */
	status = mail_post("/send", c->step_key, payload, &answer, err, sizeof(err));
	free(payload);
	if (status < 200 || status > 299)
	{
		if (status < 0)
			logf_("mail API: %s", err);
		else
			logf_("mail API answered %d", status);
		free(answer.data);
		return 1;				/* released: a retry calls again */
	}
	idem_response_set_status(resp, status);
	idem_response_add_header(resp, "Content-Type", "application/json");
	if (idem_response_set_body(resp, answer.data ? answer.data : "",
							   answer.len) < 0)
	{
		free(answer.data);
		return -1;
	}
	free(answer.data);
	if (c->sleep_at == NULL || strcmp(c->sleep_at, "in-step") == 0)
		test_sleep(c, "in the send step, after the mail API answered");
	return 0;
}

/*
 * Parses text (len bytes) as one JSON object, strictly, with json-c.
 * Returns it, or NULL with the reason in err.
 */
static json_object *
parse_object(const char *text, size_t len, char *err, size_t errlen)
{
	struct json_tokener *tok = json_tokener_new_ex(JSON_TOKENER_DEFAULT_DEPTH * 2);
	json_object *obj = NULL;
	enum json_tokener_error jerr;

	if (tok == NULL)
	{
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	if (memchr(text, '\0', len) == NULL)
		obj = json_tokener_parse_ex(tok, text, (int) len);
	jerr = json_tokener_get_error(tok);
	if (memchr(text, '\0', len) != NULL)
		snprintf(err, errlen, "a NUL byte at byte %zu",
				 (size_t) ((const char *) memchr(text, '\0', len) - text));
	else if (obj == NULL)
		snprintf(err, errlen, "%s at byte %zu",
				 jerr == json_tokener_continue ? "unexpected end of data" :
				 json_tokener_error_desc(jerr), json_tokener_get_parse_end(tok));
	else if (json_tokener_get_parse_end(tok) != len)
		snprintf(err, errlen, "trailing characters after the object at byte %zu",
				 json_tokener_get_parse_end(tok));
	else if (!json_object_is_type(obj, json_type_object))
		snprintf(err, errlen, "expected a JSON object at byte 0");
	else
	{
		json_tokener_free(tok);
		return obj;
	}
	json_object_put(obj);
	json_tokener_free(tok);
	return NULL;
}

/* the mail API's id for the email (in the step's stored answer), or NULL */
static char *
mail_message_id(const idem_record *step)
{
	size_t		len;
	const char *b = idem_record_body(step, &len);
	json_object *answer;
	json_object *id;
	char		err[160];
	char	   *result = NULL;

	if (b == NULL || (answer = parse_object(b, len, err, sizeof(err))) == NULL)
		return NULL;
	if (json_object_object_get_ex(answer, "id", &id) &&
		json_object_is_type(id, json_type_string))
		result = strdup(json_object_get_string(id));
	json_object_put(answer);
	return result;
}

/*
 * Runs the send step of the email, whose run is the request; *o is its
 * outcome.  -1 when the step could not be set up.
 */
static int
run_send_step(call *c, const char *key, char *run_id, idem_record **step,
			  idem_outcome *o)
{
	const char *parts[3] = {"emails", c->tenant, key};
	idem_opts	opts = {0};

	if (idem_derive_key(run_id, 3, parts) < 0 ||
		idem_set_run_id(c->w->idem, run_id) < 0 ||
		idem_step_key(c->w->idem, "send", c->step_key) < 0)
	{
		idem_set_run_id(c->w->idem, NULL);
		return -1;
	}
	opts.scope = c->tenant;
	*o = idem_step(c->w->idem, "send", &opts, send_step, c, step);
	idem_set_run_id(c->w->idem, NULL);
	return 0;
}

/* POST /emails */
static int
email_send(idem_response *resp, void *arg)
{
	call	   *c = arg;
	const char *key = idem_response_key(resp);
	char		run_id[IDEM_HASH_SIZE];
	char		rnd[40];
	char		eid[24];
	idem_record *step = NULL;
	idem_outcome o;
	json_object *obj;
	char	   *message_id;

	c->ran = 1;
	/* the run is the request: same tenant and key, same run, same steps */
	if (key == NULL)
	{
		random_token(rnd, sizeof(rnd), "unprotected-");
		key = rnd;
	}
	if (run_send_step(c, key, run_id, &step, &o) < 0)
		return -1;
	if (o != IDEM_FRESH && o != IDEM_REPLAY)
	{
		char		err[160];

		snprintf(err, sizeof(err), "the mail service failed (%s: %s)",
				 idem_outcome_name(o), idem_error_name(idem_errcode(c->w->idem)));
		idem_record_free(step);
		/* 502: not stored, so a retry tries again */
		return set_error(resp, 502, "api_error", "mail_failed", err);
	}
	message_id = mail_message_id(step);
	idem_record_free(step);

	if (c->sleep_at && strcmp(c->sleep_at, "after-step") == 0)
		test_sleep(c, "after the send step committed");

	obj = jo_new();
	snprintf(eid, sizeof(eid), "em_%.16s", run_id);
	jo_add_string(obj, "id", eid);
	jo_add_string(obj, "object", "email");
	jo_add_string(obj, "tenant", c->tenant);
	jo_add_string(obj, "to", c->to);
	jo_add_string(obj, "subject", c->subject);
	jo_add_string(obj, "message_id", message_id);
	jo_add_string(obj, "downstream_key", c->step_key);
	jo_add_int(obj, "attempt", idem_response_attempt(resp));
	jo_add_string(obj, "status", "queued");
	free(message_id);

	if (c->forced_status)
	{
		json_object_put(obj);
		return set_error(resp, c->forced_status, "api_error", "test_failure",
						 "failure forced by X-Test-Status");
	}
	idem_response_set_status(resp, 202);
	return set_json_body(resp, obj);
}

/* ---- checks before the key is looked at ---------------------------------- */

int
valid_tenant(const char *t)
{
	size_t		n = 0;

	for (; t[n]; n++)
		if (!isalnum((unsigned char) t[n]) && t[n] != '-' && t[n] != '_' && t[n] != '.')
			return 0;
	return n > 0 && n <= 64;
}

/* The tenant of the request; NULL after answering 400/401. */
static const char *
resolve_tenant(job *j)
{
	const char *auth = job_header(j, "Authorization");
	const char *t = job_header(j, "X-Tenant");
	static const char *const bearer[] = {"WWW-Authenticate", "Bearer", NULL};

	if (auth)
	{
		size_t		i;

		if (strncasecmp(auth, "Bearer ", 7) == 0)
			for (i = 0; i < cfg.nkeys; i++)
				if (strcmp(auth + 7, cfg.keys[i].token) == 0)
					return cfg.keys[i].tenant;
		respond_error(j, 401, "authentication_error", "invalid_api_key",
					  "Invalid API key provided.", bearer);
		return NULL;
	}
	if (t == NULL)
		return "default";
	if (!valid_tenant(t))
	{
		respond_error(j, 400, "invalid_request_error", "tenant_invalid",
					  "X-Tenant must be 1 to 64 letters, digits, '.', '-' or '_'.",
					  NULL);
		return NULL;
	}
	return t;
}

/*
 * A string member of the body: NULL when absent or null; NULL with
 * *problem set when it is required and absent or empty, or is not a
 * string of at most maxlen bytes (without NUL bytes).
 */
static const char *
string_field(call *c, const char *name, int required, size_t maxlen,
			 const char **problem)
{
	json_object *f = NULL;
	const char *v;

	if (!json_object_object_get_ex(c->json, name, &f) || f == NULL)
	{
		if (required)
			*problem = name;
		return NULL;
	}
	if (!json_object_is_type(f, json_type_string))
	{
		*problem = name;
		return NULL;
	}
	v = json_object_get_string(f);
	if (strlen(v) != (size_t) json_object_get_string_len(f) ||
		strlen(v) > maxlen || (required && v[0] == '\0'))
	{
		*problem = name;
		return NULL;
	}
	return v;
}

/* The body of POST /emails: to, subject, text. */
static int
validate_email(call *c, char *msg, size_t msglen)
{
	const char *problem = NULL;

	c->to = string_field(c, "to", 1, 320, &problem);
	if (!problem)
		c->subject = string_field(c, "subject", 1, 998, &problem);
	if (!problem)
		c->text = string_field(c, "text", 0, 32768, &problem);
	if (problem)
	{
		snprintf(msg, msglen, "Invalid or missing parameter: %s.", problem);
		return -1;
	}
	if (strchr(c->to, '@') == NULL)
	{
		snprintf(msg, msglen, "Invalid email address: to.");
		return -1;
	}
	return 0;
}

/* The body of POST /charges: amount, currency, description, card, remember. */
static int
validate_charge(call *c, char *msg, size_t msglen)
{
	const char *problem = NULL;
	const char *cur;
	json_object *f = NULL;
	int			i;

	if (!json_object_object_get_ex(c->json, "amount", &f) ||
		!json_object_is_type(f, json_type_int) ||
		(c->amount = json_object_get_int64(f)) <= 0 || c->amount > 99999999)
	{
		snprintf(msg, msglen, "amount must be a positive integer in the smallest "
				 "currency unit, at most 99999999.");
		return -1;
	}
	cur = string_field(c, "currency", 1, 3, &problem);
	if (cur == NULL || strlen(cur) != 3)
	{
		snprintf(msg, msglen, "currency must be a three-letter ISO code.");
		return -1;
	}
	for (i = 0; i < 3; i++)
	{
		if (!isalpha((unsigned char) cur[i]))
		{
			snprintf(msg, msglen, "currency must be a three-letter ISO code.");
			return -1;
		}
		c->currency[i] = (char) tolower((unsigned char) cur[i]);
	}
	c->currency[3] = '\0';
	c->description = string_field(c, "description", 0, 1000, &problem);
	if (!problem)
		c->card = string_field(c, "card", 0, 100, &problem);
	if (problem)
	{
		snprintf(msg, msglen, "Invalid parameter: %s.", problem);
		return -1;
	}
	c->remember = json_object_object_get_ex(c->json, "remember", &f) &&
		json_object_is_type(f, json_type_boolean) && json_object_get_boolean(f);
	return 0;
}

/* Validates the body of a POST; 0, or -1 with a message in msg. */
static int
validate(call *c, const char *body, size_t len, char *msg, size_t msglen)
{
	char		err[128];

	c->json = parse_object(body, len, err, sizeof(err));
	if (c->json == NULL)
	{
		snprintf(msg, msglen, "The body must be a JSON object: %s.", err);
		return -1;
	}
	if (c->route == ROUTE_EMAIL)
		return validate_email(c, msg, msglen);
	return validate_charge(c, msg, msglen);
}

static void
read_test_hooks(call *c)
{
	const char *v;

	if (!cfg.test_hooks)
		return;
	v = job_header(c->j, "X-Test-Sleep-Ms");
	if (v)
		c->sleep_ms = strtol(v, NULL, 10);
	if (c->sleep_ms < 0 || c->sleep_ms > 600000)
		c->sleep_ms = 0;
	c->sleep_at = job_header(c->j, "X-Test-Sleep-At");
	v = job_header(c->j, "X-Test-Handler-Fail");
	c->handler_fails = v && strcmp(v, "1") == 0;
	v = job_header(c->j, "X-Test-Status");
	if (v)
	{
		int			s = atoi(v);

		if (s >= 100 && s <= 599)
			c->forced_status = s;
	}
}

/*
 * The route of the request and its handler; -1 after answering 404 or
 * 405.
 */
static int
match_route(call *c, const char *method, const char *url)
{
	if (strcmp(url, "/charges") == 0)
		c->route = ROUTE_CHARGE_CREATE, c->handler = charge_create;
	else if (strcmp(url, "/charges-unprotected") == 0)
		c->route = ROUTE_CHARGE_UNPROTECTED, c->handler = charge_create;
	else if (strcmp(url, "/emails") == 0)
		c->route = ROUTE_EMAIL, c->handler = email_send;
	else if (strncmp(url, "/charges/ch_", 12) == 0 && url[12] &&
			 strspn(url + 12, "0123456789") == strlen(url + 12) &&
			 strlen(url + 12) < 18)
		c->route = ROUTE_CHARGE_GET, c->handler = charge_get,
			c->charge_id = strtoll(url + 12, NULL, 10);
	else
	{
		if (strncmp(url, "/charges/", 9) == 0)
			respond_error(c->j, 404, "invalid_request_error", "resource_missing",
						  "No such charge.", NULL);
		else
			respond_error(c->j, 404, "invalid_request_error", "not_found",
						  "Unrecognized request URL.", NULL);
		return -1;
	}
	if (c->route == ROUTE_CHARGE_GET ? strcmp(method, "GET") != 0
		: strcmp(method, "POST") != 0)
	{
		respond_error(c->j, 405, "invalid_request_error", "method_not_allowed",
					  "Method not allowed.",
					  c->route == ROUTE_CHARGE_GET ? allow_get : allow_post);
		return -1;
	}
	return 0;
}

/*
 * What is checked before the key is looked at: the size of the body, the
 * tenant, the body's fields.  Invalid requests are answered then, so that
 * nothing is stored for them, as Stripe does.  -1 when answered.
 */
static int
admit(call *c)
{
	job		   *j = c->j;
	char		msg[512];

	if (j->too_large)
	{
		respond_error(j, 413, "invalid_request_error", "body_too_large",
					  "The body is larger than 64 KiB.", NULL);
		return -1;
	}
	c->tenant = resolve_tenant(j);
	if (c->tenant == NULL)
		return -1;
	if (c->route != ROUTE_CHARGE_GET &&
		validate(c, j->body ? j->body : "", j->body_len, msg, sizeof(msg)) < 0)
	{
		respond_error(j, 400, "invalid_request_error", "parameter_invalid", msg, NULL);
		return -1;
	}
	read_test_hooks(c);
	return 0;
}

/* ---- the idempotency layer's answers ---------------------------------------- */

static const char *
error_type(int status, const char **code)
{
	switch (status)
	{
		case 400:
			*code = "idempotency_key_missing";
			return "invalid_request_error";
		case 409:
			*code = "idempotency_key_in_use";
			return "idempotency_error";
		case 422:
			*code = "idempotency_key_reused";
			return "idempotency_error";
		case 503:
			*code = "database_unavailable";
			return "api_error";
		default:
			*code = NULL;
			return "api_error";
	}
}

/* 503: the database is unreachable, in the shape the client asked for */
static void
respond_unavailable(job *j, int problem, const char *key)
{
	if (problem)
		respond_problem(j, IDEM_ERROR, IDEM_ERR_CONNECTION, 503, key,
						retry_after);
	else
		respond_error(j, 503, "api_error", "database_unavailable",
					  "The database is unreachable; retry with the same key.",
					  retry_after);
}

/* an answer of the idempotency layer in the Stripe shape */
static void
respond_layer_error(call *c, int status)
{
	const char *method = c->j->method;
	const char *url = c->j->url;
	const char *code = NULL;
	const char *type = error_type(status, &code);
	const char *text;
	char		msg[512];

	switch (status)
	{
		case 409:
			text = "A request with the same Idempotency-Key is in flight; retry later.";
			break;
		case 422:
			text = "This Idempotency-Key was used with another request (body or path).";
			break;
		case 503:
			text = "The database is unreachable; retry with the same key.";
			break;
		case 400:
			snprintf(msg, sizeof(msg), "Send an Idempotency-Key header of 1 to 255 "
					 "bytes with %s %s (%s).", method, url, idem_errmsg(c->w->idem));
			text = msg;
			break;
		default:
			text = "An internal error occurred; retry with the same key.";
			logf_("%s %s: %s: %s", method, url, idem_error_name(idem_errcode(c->w->idem)),
				  idem_errmsg(c->w->idem));
	}
	respond_error(c->j, (unsigned) status, type, code, text,
				  status == 409 || status == 503 ? retry_after : NULL);
}

/* the response of a request that went through the idempotency layer */
static void
respond_outcome(call *c, idem_outcome o, int status, const idem_record *rec,
				int problem, const char *key)
{
	worker	   *w = c->w;

	if ((o == IDEM_FRESH || o == IDEM_REPLAY) && rec)
		respond_record(c->j, rec, (unsigned) status, o == IDEM_REPLAY,
					   c->ran ? c->set_cookie : "",
					   c->ran ? c->authorization : "");
	else if (problem)
	{
		if (status >= 500 && status != 503)
			logf_("%s %s: %s: %s", c->j->method, c->j->url,
				  idem_error_name(idem_errcode(w->idem)), idem_errmsg(w->idem));
		respond_problem(c->j, o, idem_errcode(w->idem), (unsigned) status, key,
						status == 409 || status == 503 ? retry_after : NULL);
	}
	else
		respond_layer_error(c, status);
}

/* ---- dispatch (in a worker) ----------------------------------------------- */

/*
 * Runs the request through libidem's HTTP helper.  Charges: reservation,
 * insert and stored response in one transaction, which the runner opens
 * and ends (idem_set_transaction): committed when the response is stored
 * (or, unprotected, when its status would be), rolled back otherwise.
 * Emails: autocommit, so that the step's stored result outlives a crash
 * of this request (the point of the step).
 */
static void
run_request(call *c, const idem_http_request *hr, idem_outcome *o,
			idem_record **rec, int *status)
{
	worker	   *w = c->w;
	const char *v = job_header(c->j, "X-Idempotency-Wait");
	const idem_http *policy;
	int			tx;

	policy = cfg.no_wait || (v && strcmp(v, "0") == 0) ? policy_nowait : policy_wait;
	tx = c->route == ROUTE_CHARGE_CREATE || c->route == ROUTE_CHARGE_UNPROTECTED;
	/* BEGIN goes with the reserve, COMMIT with the commit: a round trip each */
	idem_set_transaction(w->idem, tx);
	*o = idem_http_run(w->idem, policy, hr, c->handler, c, rec, status);
}

/* the request's log line */
static void
log_request(const call *c, const char *key, int status, idem_outcome o,
			const idem_record *rec)
{
	const char *note = "";

	if (cfg.quiet)
		return;
	if (rec && o == IDEM_FRESH && strcmp(idem_record_state(rec), "committed") != 0)
		note = strcmp(idem_record_state(rec), "bypassed") == 0 ? " (bypassed)"
			: " (not stored)";
	logf_("%s %s tenant=%s key=%s -> %d %s%s", c->j->method, c->j->url,
		  c->tenant, key ? key : "-", status, idem_outcome_name(o), note);
}

/* runs an admitted request on its worker and answers it */
static void
serve(call *c)
{
	job		   *j = c->j;
	worker	   *w = c->w;
	idem_http_request hr;
	idem_record *rec = NULL;
	idem_outcome o = IDEM_ERROR;
	int			status = 500;
	int			problem;
	const char *key;
	char		msg[512];

	memset(&hr, 0, sizeof(hr));
	hr.method = j->method;
	hr.path = j->url;
	hr.headers = j->headers;
	hr.nheaders = j->nheaders;
	hr.body = j->body;
	hr.body_len = j->body_len;
	hr.scope = c->tenant;
	/* the idempotency layer's answers: problem details when asked for */
	problem = idem_http_wants_problem(&hr);
	key = job_header(j, "Idempotency-Key");

	if (worker_ready(w, msg, sizeof(msg)) < 0)
	{
		logf_("database unreachable: %s", msg);
		respond_unavailable(j, problem, key);
		return;
	}
	run_request(c, &hr, &o, &rec, &status);
	log_request(c, key, status, o, rec);
	respond_outcome(c, o, status, rec, problem, key);
	idem_record_free(rec);
	if (w->pg && PQstatus(w->pg) != CONNECTION_OK)
		worker_close(w);
}

void
dispatch(worker *w, job *j)
{
	call	   *c = calloc(1, sizeof(call));

	if (c == NULL)
		return;
	c->j = j;
	c->w = w;
	w->method = j->method;
	w->url = j->url;
	if (match_route(c, j->method, j->url) == 0 && admit(c) == 0)
		serve(c);
	w->method = NULL;
	w->url = NULL;
	json_object_put(c->json);
	free(c);
}
