/*-------------------------------------------------------------------------
 *
 * test_offline.c
 *	  libidem tests that need no server: key derivation and request hash
 *	  against vectors computed with python3's hashlib, the response header
 *	  encoding, the HTTP decision table, the problem details and the Accept
 *	  header's negotiation, names and versions, and the error of a handle
 *	  whose server cannot be reached (with its observer's events).
 *
 *-------------------------------------------------------------------------
 */
#include <stdlib.h>
#include <string.h>

#include "idem.h"
#include "tinytest.h"

/*
 * Expected values from:
 *   def f(parts):
 *       h = hashlib.sha256()
 *       for p in parts: h.update(struct.pack('>Q', len(p)) + p)
 *       return h.hexdigest()
 */
typedef struct
{
	size_t		n;
	const char *parts[11];
	const char *want;
} derive_vector;

static const derive_vector derive_vectors[] = {
	{0, {NULL}, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
	{1, {""}, "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"},
	{2, {"", ""}, "374708fff7719dd5979ec875d56cd2286f6d3cf7ec317a3b25632aab28ec37bb"},
	{2, {"a", "bc"}, "3fafa1cf2f19a7c1129beb20cf0983f73a489a221fc0dd2f16d1be292d089205"},
	{2, {"ab", "c"}, "601d5476e2ccfe2c87a2bba7a322659734a05749d5b5aa781f513e4912db0d5f"},
	{2, {"run-1", "charge"}, "94c650aebe353f0dbe2fd9c01843afbcd85fabbf00879188448739c4bee5afe9"},
	{3, {"caf\303\251", "\346\227\245\346\234\254", "\360\237\230\200"}, "69f85fdda2959b39903ed5cafc47b7cdae200f08529230733dcd5472fb1daf4e"},
	{11, {"\001", "\002", "\003", "\004", "\005", "\006", "\007", "\010", "\011", "\012", "\013"}, "5a2820388506a4d14220f29e0145224b1faa0807f8d0bfdcfe267eecf139cdcb"},
};

typedef struct
{
	const char *method;
	const char *path;
	const char *body;
	size_t		body_len;
	const char *want;
} request_vector;

static const request_vector request_vectors[] = {
	{"POST", "/x", "\000\377", 2, "26a0d9d228dfadb8be90b752b7b134db4a1609c1278ef88ffc14c46614203409"},
	{"POST", "/v1/charges", "", 0, "fc06cf764a3d3c23fc447747c90d87a00f4382c2b4d46cd39c2b7e49ca2ea4f1"},
	{"", "", "", 0, "9d908ecfb6b256def8b49a7c504e6c889c4b0e41fe6ce3e01863dd7b61a20aa0"},
	{"PUT", "/a\077b=c", "{\042amount\042: 100}", 15, "2ef11006fd6beed06c23b4fc867002da68b07eab56663137bc9936ae2eea51b7"},
	{"PATCH", "/p", "\000\000\000", 3, "e0ca193b731b40f9a182911d269e974d451e21cfec32f79a58cd1cdc0f3d1bc8"},
};

static void
test_derive_key(void)
{
	char		out[IDEM_HASH_SIZE];
	char		x300[301];
	const char *parts[2];
	size_t		i;

	for (i = 0; i < sizeof(derive_vectors) / sizeof(derive_vectors[0]); i++)
	{
		const derive_vector *v = &derive_vectors[i];

		CHECK(idem_derive_key(out, v->n, v->parts) == 0 &&
			  strcmp(out, v->want) == 0,
			  "derive_key vector %zu (%zu parts) = %.12s...", i, v->n, v->want);
	}
	memset(x300, 'x', 300);
	x300[300] = '\0';
	parts[0] = x300;
	CHECK(idem_derive_key(out, 1, parts) == 0 &&
		  strcmp(out, "ed6e476c63cfa0dd32e5df013e283c03074545cb4b5d82da9afcd49b2a15cb07") == 0,
		  "derive_key of a 300-byte part");

	parts[0] = "a";
	parts[1] = NULL;
	CHECK(idem_derive_key(out, 2, parts) == -1, "derive_key refuses a NULL part");
	CHECK(idem_derive_key(out, 1, NULL) == -1, "derive_key refuses NULL parts");
	CHECK(idem_derive_key(out, 0, NULL) == 0 &&
		  strcmp(out, derive_vectors[0].want) == 0,
		  "derive_key of no parts is SHA-256 of nothing");
}

static void
test_request_hash(void)
{
	char		out[IDEM_HASH_SIZE];
	char		all[256];
	char		empty_null[IDEM_HASH_SIZE];
	size_t		i;

	for (i = 0; i < sizeof(request_vectors) / sizeof(request_vectors[0]); i++)
	{
		const request_vector *v = &request_vectors[i];

		CHECK(idem_request_hash(out, v->method, v->path, v->body,
								v->body_len) == 0 &&
			  strcmp(out, v->want) == 0,
			  "request_hash vector %zu (%s %s, %zu body bytes)", i,
			  v->method, v->path, v->body_len);
	}
	for (i = 0; i < 256; i++)
		all[i] = (char) i;
	CHECK(idem_request_hash(out, "DELETE", "/\303\251", all, 256) == 0 &&
		  strcmp(out, "07c60820e4f9cb58d2ceab89edbe929a1506456a3960faf80b72c50e5d723fd3") == 0,
		  "request_hash of every byte value, a UTF-8 path");

	CHECK(idem_request_hash(empty_null, "POST", "/v1/charges", NULL, 0) == 0 &&
		  strcmp(empty_null, request_vectors[1].want) == 0,
		  "request_hash: NULL body = empty body");
	CHECK(idem_request_hash(out, "POST", "/v1/charges", NULL, 99) == 0 &&
		  strcmp(out, empty_null) == 0,
		  "request_hash: NULL body with a length is still empty");
	CHECK(idem_request_hash(out, NULL, "/", NULL, 0) == -1,
		  "request_hash refuses a NULL method");
	CHECK(idem_request_hash(out, "POST", NULL, NULL, 0) == -1,
		  "request_hash refuses a NULL path");
}

static void
test_names(void)
{
	CHECK(idem_version() == IDEM_VERSION_MAJOR * 10000 +
		  IDEM_VERSION_MINOR * 100 + IDEM_VERSION_PATCH,
		  "idem_version matches the header (%d)", idem_version());
	CHECK(strcmp(idem_outcome_name(IDEM_FRESH), "fresh") == 0 &&
		  strcmp(idem_outcome_name(IDEM_REPLAY), "replay") == 0 &&
		  strcmp(idem_outcome_name(IDEM_MISMATCH), "mismatch") == 0 &&
		  strcmp(idem_outcome_name(IDEM_IN_FLIGHT), "in_flight") == 0 &&
		  strcmp(idem_outcome_name(IDEM_NOT_FOUND), "not_found") == 0 &&
		  strcmp(idem_outcome_name(IDEM_ERROR), "error") == 0,
		  "outcome names");
	CHECK(strcmp(idem_error_name(IDEM_OK), "ok") == 0 &&
		  strcmp(idem_error_name(IDEM_ERR_NO_EXTENSION), "no_extension") == 0 &&
		  strcmp(idem_error_name(IDEM_ERR_NOMEM), "nomem") == 0,
		  "error names");
	CHECK(IDEM_LEASE_LOST == IDEM_ERROR + 1 &&
		  IDEM_ERR_LEASE_LOST == IDEM_ERR_NOMEM + 1 &&
		  strcmp(idem_outcome_name(IDEM_LEASE_LOST), "lease_lost") == 0 &&
		  strcmp(idem_error_name(IDEM_ERR_LEASE_LOST), "lease_lost") == 0 &&
		  idem_http_error_status(IDEM_LEASE_LOST, IDEM_ERR_LEASE_LOST) == 409,
		  "lease_lost: appended after the 1.0 values, HTTP 409");
}

static void
test_response_headers(void)
{
	idem_response *resp = idem_response_new();
	const char *json;

	CHECK(resp != NULL, "idem_response_new");
	CHECK(strcmp(idem_response_headers_json(resp), "{}") == 0,
		  "no headers encode as {}");
	idem_response_add_header(resp, "Content-Type", "application/json");
	idem_response_add_header(resp, "Set-Cookie", "session=secret");
	idem_response_add_header(resp, "authorization", "Bearer x");
	idem_response_add_header(resp, "Proxy-Authorization", "Basic y");
	idem_response_add_header(resp, "Vary", "Accept");
	idem_response_add_header(resp, "X-Quote", "a \"b\" \\ c\n\001");
	idem_response_add_header(resp, "vary", "Origin");
	CHECK(idem_response_add_header(resp, "", "x") == -1,
		  "an empty header name is refused");
	json = idem_response_headers_json(resp);
	CHECK(strcmp(json, "{\"Content-Type\": [\"application/json\"], "
				 "\"Vary\": [\"Accept\", \"Origin\"], "
				 "\"X-Quote\": [\"a \\\"b\\\" \\\\ c\\u000a\\u0001\"]}") == 0,
		  "headers encode as name -> [values], credentials dropped: %s", json);
	idem_response_free(resp);
}

/* a handler for the bypass path: no database involved */
static int
echo_handler(idem_response *resp, void *arg)
{
	const char *body = arg;

	idem_response_set_status(resp, 201);
	idem_response_add_header(resp, "Content-Type", "text/plain");
	idem_response_add_header(resp, "Set-Cookie", "a=b");
	idem_response_add_header(resp, "X-Multi", "1");
	idem_response_add_header(resp, "x-multi", "2 \"two\"");
	idem_response_set_body(resp, body, strlen(body));
	return 0;
}

static int
failing_handler(idem_response *resp, void *arg)
{
	(void) resp;
	(void) arg;
	return 7;
}

typedef struct
{
	const char *method;
	const char *path;
	const char *key;			/* NULL: no header */
	int			required;
	idem_http_action want;
	int			want_status;
} decision_row;

static void
test_http_decisions(void)
{
	idem_http  *http = idem_http_new();
	idem_http  *req_http = idem_http_new();
	char		long_key[300];
	static const decision_row rows[] = {
		{"POST", "/v1/charges", "k1", 0, IDEM_HTTP_GUARD, 0},
		{"PUT", "/v1/charges/1", "k1", 0, IDEM_HTTP_GUARD, 0},
		{"PATCH", "/v1/charges/1", "k1", 0, IDEM_HTTP_GUARD, 0},
		{"DELETE", "/v1/charges/1", "k1", 0, IDEM_HTTP_GUARD, 0},
		{"post", "/v1/charges", "k1", 0, IDEM_HTTP_GUARD, 0},
		{"GET", "/v1/charges", "k1", 0, IDEM_HTTP_BYPASS, 0},
		{"HEAD", "/v1/charges", "k1", 0, IDEM_HTTP_BYPASS, 0},
		{"OPTIONS", "/v1/charges", "k1", 0, IDEM_HTTP_BYPASS, 0},
		{"GET", "/v1/charges", NULL, 1, IDEM_HTTP_BYPASS, 0},
		{"POST", "/v1/charges", NULL, 0, IDEM_HTTP_BYPASS, 0},
		{"POST", "/v1/charges", NULL, 1, IDEM_HTTP_REJECT, 400},
		{"POST", "/v1/charges", "", 0, IDEM_HTTP_REJECT, 400},
		/* exclusions: exact path, method-specific */
		{"POST", "/v1/auth/login", "k1", 1, IDEM_HTTP_BYPASS, 0},
		{"POST", "/v1/auth/login?next=/", "k1", 1, IDEM_HTTP_BYPASS, 0},
		{"PUT", "/v1/auth/login", "k1", 0, IDEM_HTTP_GUARD, 0},
		{"POST", "/v1/auth/login/x", "k1", 0, IDEM_HTTP_GUARD, 0},
		/* prefix rule "* /internal/" + '*' */
		{"DELETE", "/internal/cache", "k1", 1, IDEM_HTTP_BYPASS, 0},
		{"POST", "/internal/", "k1", 1, IDEM_HTTP_BYPASS, 0},
		{"POST", "/internal", "k1", 0, IDEM_HTTP_GUARD, 0},
		{"POST", "/internalx", "k1", 0, IDEM_HTTP_GUARD, 0},
		/* prefix rule "PATCH /v2" + '*': a bare prefix */
		{"PATCH", "/v2/users", "k1", 0, IDEM_HTTP_BYPASS, 0},
		{"PATCH", "/v2", "k1", 0, IDEM_HTTP_BYPASS, 0},
		{"POST", "/v2/users", "k1", 0, IDEM_HTTP_GUARD, 0},
	};
	size_t		i;

	CHECK(http != NULL && req_http != NULL, "idem_http_new");
	CHECK(idem_http_exclude(http, "POST /v1/auth/login") == 0, "exclude an exact route");
	CHECK(idem_http_exclude(http, "* /internal/*") == 0, "exclude a prefix for any method");
	CHECK(idem_http_exclude(http, "PATCH /v2*") == 0, "exclude a bare prefix");
	CHECK(idem_http_exclude(req_http, "POST /v1/auth/login") == 0 &&
		  idem_http_exclude(req_http, "* /internal/*") == 0 &&
		  idem_http_exclude(req_http, "PATCH /v2*") == 0, "same exclusions, header required");
	idem_http_set_required(req_http, 1);

	CHECK(idem_http_exclude(http, "POST") == -1, "rule without a path is refused");
	CHECK(idem_http_exclude(http, "POST v1/x") == -1, "rule with a relative path is refused");
	CHECK(idem_http_exclude(http, " /x") == -1, "rule without a method is refused");
	CHECK(idem_http_exclude(http, "PO$T /x") == -1, "rule with a bad method is refused");
	CHECK(idem_http_exclude(http, "POST /a b") == -1, "rule with a space in the path is refused");
	CHECK(idem_http_exclude(http, NULL) == -1, "NULL rule is refused");

	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
	{
		const decision_row *r = &rows[i];
		idem_header h = {"Idempotency-Key", r->key};
		idem_http_request req;
		const char *key = NULL;
		const char *reason = NULL;
		int			status = -1;
		idem_http_action a;

		memset(&req, 0, sizeof(req));
		req.method = r->method;
		req.path = r->path;
		req.headers = r->key ? &h : NULL;
		req.nheaders = r->key ? 1 : 0;
		a = idem_http_decide(r->required ? req_http : http, &req, &key,
							 &status, &reason);
		CHECK(a == r->want && status == r->want_status &&
			  (a != IDEM_HTTP_GUARD || (key && strcmp(key, r->key) == 0)) &&
			  reason != NULL,
			  "decide %s %s key=%s required=%d -> %d/%d (%s)", r->method,
			  r->path, r->key ? r->key : "(none)", r->required, (int) a,
			  status, reason ? reason : "");
	}

	/* header name: configurable, matched without case */
	{
		idem_header hs[2] = {{"X-Other", "a"}, {"x-request-id", "abc"}};
		idem_http_request req;
		const char *key = NULL;
		int			status;

		memset(&req, 0, sizeof(req));
		req.method = "POST";
		req.path = "/x";
		req.headers = hs;
		req.nheaders = 2;
		CHECK(idem_http_decide(http, &req, &key, &status, NULL) == IDEM_HTTP_BYPASS,
			  "default header name: X-Request-Id is not a key");
		CHECK(idem_http_set_header_name(http, "X-Request-ID") == 0,
			  "set the header name");
		CHECK(idem_http_decide(http, &req, &key, &status, NULL) == IDEM_HTTP_GUARD &&
			  strcmp(key, "abc") == 0,
			  "configured header name matches without case");
		CHECK(idem_http_set_header_name(http, "") == -1 &&
			  idem_http_set_header_name(http, NULL) == -1,
			  "an empty header name is refused");

		memset(long_key, 'k', sizeof(long_key) - 1);
		long_key[sizeof(long_key) - 1] = '\0';
		hs[1].value = long_key;
		CHECK(idem_http_decide(http, &req, &key, &status, NULL) == IDEM_HTTP_REJECT &&
			  status == 400, "a key over 255 bytes is rejected with 400");
		long_key[255] = '\0';
		CHECK(idem_http_decide(http, &req, &key, &status, NULL) == IDEM_HTTP_GUARD,
			  "a key of 255 bytes is guarded");
	}

	/* what is stored */
	CHECK(idem_http_cacheable(http, 200) && idem_http_cacheable(http, 201) &&
		  idem_http_cacheable(http, 400) && idem_http_cacheable(http, 404) &&
		  idem_http_cacheable(http, 409) && idem_http_cacheable(http, 422),
		  "2xx and 4xx (but 429) are stored");
	CHECK(!idem_http_cacheable(http, 500) && !idem_http_cacheable(http, 503) &&
		  !idem_http_cacheable(http, 599) && !idem_http_cacheable(http, 429),
		  "5xx and 429 are released by default");
	idem_http_set_cache_failures(http, 1);
	CHECK(idem_http_cacheable(http, 500) && idem_http_cacheable(http, 429),
		  "cache_failures stores 5xx and 429");

	/* the status to answer with */
	CHECK(idem_http_error_status(IDEM_FRESH, IDEM_OK) == 0 &&
		  idem_http_error_status(IDEM_REPLAY, IDEM_OK) == 0 &&
		  idem_http_error_status(IDEM_IN_FLIGHT, IDEM_ERR_IN_FLIGHT) == 409 &&
		  idem_http_error_status(IDEM_MISMATCH, IDEM_ERR_MISMATCH) == 422 &&
		  idem_http_error_status(IDEM_ERROR, IDEM_ERR_BAD_INPUT) == 400 &&
		  idem_http_error_status(IDEM_ERROR, IDEM_ERR_CONNECTION) == 503 &&
		  idem_http_error_status(IDEM_ERROR, IDEM_ERR_SERVER) == 500,
		  "error statuses: 409 in flight, 422 mismatch, 400, 503, 500");

	idem_http_free(http);
	idem_http_free(req_http);
}

/* ---- problem details ------------------------------------------------------ */

/* the problem body of (outcome, err, status, key), or "" */
static const char *
problem(idem_outcome o, idem_error err, int status, const char *key)
{
	static char buf[IDEM_HTTP_PROBLEM_SIZE];

	idem_http_problem_json(o, err, status, key, buf, sizeof(buf));
	return buf;
}

/* 1 when every byte of s is printable ASCII (no control, nothing beyond) */
static int
printable_ascii(const char *s)
{
	for (; *s; s++)
		if ((unsigned char) *s < 0x20 || (unsigned char) *s > 0x7e)
			return 0;
	return 1;
}

static void
test_problem_details(void)
{
	char		buf[IDEM_HTTP_PROBLEM_SIZE];
	char		small[40];
	char		key[400];
	const char *b;
	int			n;

	/* one problem per decision of the helper, with its stable type */
	CHECK(strcmp(problem(IDEM_ERROR, IDEM_ERR_BAD_INPUT, 400, NULL),
				 "{\"type\": \"https://idempotency.dev/problems/missing-key\", "
				 "\"title\": \"Idempotency-Key is missing\", \"status\": 400, "
				 "\"detail\": \"This operation is idempotent and needs an "
				 "Idempotency-Key header of 1 to 255 bytes.\"}") == 0,
		  "400 missing key: %s", problem(IDEM_ERROR, IDEM_ERR_BAD_INPUT, 400, NULL));
	CHECK(strcmp(problem(IDEM_IN_FLIGHT, IDEM_ERR_IN_FLIGHT, 409, "order-1"),
				 "{\"type\": \"https://idempotency.dev/problems/in-flight\", "
				 "\"title\": \"A request is outstanding for this Idempotency-Key\", "
				 "\"status\": 409, \"detail\": \"A request with Idempotency-Key "
				 "\\\"order-1\\\" is still being processed; retry later to get its "
				 "response.\"}") == 0,
		  "409 in flight: %s", problem(IDEM_IN_FLIGHT, IDEM_ERR_IN_FLIGHT, 409, "order-1"));
	b = problem(IDEM_MISMATCH, IDEM_ERR_MISMATCH, 0, "order-1");
	CHECK(strstr(b, "\"type\": \"https://idempotency.dev/problems/key-reused\"") &&
		  strstr(b, "\"title\": \"Idempotency-Key is already used\"") &&
		  strstr(b, "\"status\": 422,") &&
		  strstr(b, "Idempotency-Key \\\"order-1\\\" was already made"),
		  "422 key reused (status 0: from idem_http_error_status): %s", b);
	b = problem(IDEM_LEASE_LOST, IDEM_ERR_LEASE_LOST, 409, "order-1");
	CHECK(strstr(b, "problems/lease-lost\"") && strstr(b, "\"status\": 409,") &&
		  strstr(b, "ran past its lease"), "409 lease lost: %s", b);
	b = problem(IDEM_ERROR, IDEM_ERR_CONNECTION, 503, "order-1");
	CHECK(strstr(b, "problems/store-unavailable\"") && strstr(b, "\"status\": 503,") &&
		  strstr(b, "\\\"order-1\\\""), "503 database unreachable: %s", b);
	CHECK(strstr(problem(IDEM_ERROR, IDEM_ERR_READ_ONLY, 0, "k"), "store-unavailable") &&
		  strstr(problem(IDEM_ERROR, IDEM_OK, 503, "k"), "store-unavailable"),
		  "a read-only database, or a 503 the application decided: store-unavailable");
	b = problem(IDEM_ERROR, IDEM_ERR_HANDLER, 500, "order-1");
	CHECK(strstr(b, "problems/handler-failed\"") && strstr(b, "\"status\": 500,") &&
		  strstr(b, "its key was released"), "500 handler failed: %s", b);
	b = problem(IDEM_ERROR, IDEM_ERR_TOO_LARGE, 500, "order-1");
	CHECK(strstr(b, "problems/store-failed\"") && strstr(b, "\"status\": 500,"),
		  "500 the store failed: %s", b);
	CHECK(strstr(problem(IDEM_ERROR, IDEM_ERR_SERVER, 0, "k"), "store-failed") &&
		  strstr(problem(IDEM_NOT_FOUND, IDEM_ERR_NOT_FOUND, 0, "k"), "store-failed"),
		  "other errors: store-failed, status 500");
	b = problem(IDEM_ERROR, IDEM_ERR_BAD_INPUT, 400, "");
	CHECK(strstr(b, "problems/invalid-key\"") &&
		  strstr(b, "\"title\": \"Idempotency-Key is invalid\"") &&
		  strstr(b, "header is empty"), "400 empty key: %s", b);
	CHECK(strstr(problem(IDEM_ERROR, IDEM_ERR_BAD_INPUT, 400, "k"), "invalid-key") &&
		  strstr(problem(IDEM_ERROR, IDEM_ERR_BAD_INPUT, 400, "k"), "refused as bad input"),
		  "400 a key the server refused: invalid-key");
	CHECK(strstr(problem(IDEM_IN_FLIGHT, IDEM_ERR_IN_FLIGHT, 409, NULL),
				 "A request with this Idempotency-Key is still"),
		  "without a key, the detail says this Idempotency-Key");

	/* no problem for answers that are the handler's */
	strcpy(buf, "junk");
	CHECK(idem_http_problem_json(IDEM_FRESH, IDEM_OK, 201, "k", buf, sizeof(buf)) == -1 &&
		  buf[0] == '\0' &&
		  idem_http_problem_json(IDEM_REPLAY, IDEM_OK, 0, "k", buf, sizeof(buf)) == -1,
		  "FRESH and REPLAY: -1 and \"\"");

	/* escaping of the key inside the detail */
	b = problem(IDEM_IN_FLIGHT, IDEM_ERR_IN_FLIGHT, 409, "a\"b\\c");
	CHECK(strstr(b, "Idempotency-Key \\\"a\\\"b\\\\c\\\" is") != NULL,
		  "quotes and backslashes escaped: %s", b);
	b = problem(IDEM_IN_FLIGHT, IDEM_ERR_IN_FLIGHT, 409, "l1\nl2\r\t\b\f\001\037\177z");
	CHECK(strstr(b, "\\\"l1\\nl2\\r\\t\\b\\f\\u0001\\u001f\\u007fz\\\"") != NULL &&
		  printable_ascii(b),
		  "control characters escaped (\\n \\r \\t \\b \\f, \\u00XX, DEL): %s", b);
	b = problem(IDEM_IN_FLIGHT, IDEM_ERR_IN_FLIGHT, 409,
				"caf\303\251 \346\227\245\346\234\254 \360\237\230\200");
	CHECK(strstr(b, "\\\"caf\\u00e9 \\u65e5\\u672c \\ud83d\\ude00\\\"") != NULL &&
		  printable_ascii(b),
		  "non-ASCII as \\uXXXX, a surrogate pair beyond U+FFFF: %s", b);
	b = problem(IDEM_IN_FLIGHT, IDEM_ERR_IN_FLIGHT, 409,
				"x\377y\303(\300\257\355\240\200\364\220\200\200z\342\202");
	CHECK(strstr(b, "\\\"x\\ufffdy\\ufffd(\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd"
				 "\\ufffd\\ufffd\\ufffd\\ufffdz\\ufffd\\ufffd\\\"") != NULL &&
		  printable_ascii(b),
		  "bytes that are not UTF-8 (stray, truncated, overlong, surrogate, "
		  "beyond U+10FFFF) as U+FFFD: %s", b);

	/* a key too long for a key: its first 64 bytes, cut on a character */
	key[0] = 'a';
	for (n = 1; n < 301; n += 2)
	{
		key[n] = '\303';
		key[n + 1] = '\251';
	}
	key[301] = '\0';
	b = problem(IDEM_ERROR, IDEM_ERR_BAD_INPUT, 400, key);
	CHECK(strstr(b, "problems/invalid-key\"") &&
		  strstr(b, "\\\"a\\u00e9") &&
		  strstr(b, "\\u00e9...\\\" is longer than 255 bytes") &&
		  strlen(strstr(b, "\\\"a")) - strlen(strstr(b, "...")) == 2 + 1 + 31 * 6,
		  "a key over 255 bytes: its first 63 bytes (31 characters and 'a', "
		  "not splitting one), then ...");

	/* the buffer: never a truncated body; the length it needs */
	n = idem_http_problem_json(IDEM_IN_FLIGHT, IDEM_ERR_IN_FLIGHT, 409, "k",
							   buf, sizeof(buf));
	strcpy(small, "junk");
	CHECK(n > (int) sizeof(small) &&
		  idem_http_problem_json(IDEM_IN_FLIGHT, IDEM_ERR_IN_FLIGHT, 409, "k",
								 small, sizeof(small)) == n &&
		  small[0] == '\0', "a buffer too small: \"\" and the length needed (%d)", n);
	CHECK(idem_http_problem_json(IDEM_IN_FLIGHT, IDEM_ERR_IN_FLIGHT, 409, "k",
								 buf, (size_t) n) == n && buf[0] == '\0' &&
		  idem_http_problem_json(IDEM_IN_FLIGHT, IDEM_ERR_IN_FLIGHT, 409, "k",
								 buf, (size_t) n + 1) == n &&
		  strlen(buf) == (size_t) n && buf[n - 1] == '}',
		  "n bytes do not hold a body of n (the NUL), n + 1 do");
	CHECK(idem_http_problem_json(IDEM_IN_FLIGHT, IDEM_ERR_IN_FLIGHT, 409, "k",
								 NULL, 0) == n,
		  "NULL buffer of size 0: just the length");
	memset(key, '\001', 255);
	key[255] = '\0';
	n = idem_http_problem_json(IDEM_ERROR, IDEM_ERR_CONNECTION, 503, key, buf,
							   sizeof(buf));
	CHECK(n > 255 * 6 && n < IDEM_HTTP_PROBLEM_SIZE && (size_t) n == strlen(buf),
		  "the longest body (255 control characters, the longest detail): %d "
		  "bytes, within IDEM_HTTP_PROBLEM_SIZE", n);
}

static void
test_accept(void)
{
	idem_header h[3] = {{"Content-Type", "application/json"},
	{"Accept", NULL}, {"accept", NULL}};
	idem_http_request req;
	static const struct
	{
		const char *accept;
		int			want;
	}			cases[] = {
		{"application/problem+json", 1},
		{"APPLICATION/Problem+JSON", 1},
		{"application/json, application/problem+json", 1},
		{"text/html,application/problem+json;q=0.5", 1},
		{"  application/problem+json  ;  charset=utf-8 ", 1},
		{"application/problem+json; q=0.001", 1},
		{"application/problem+json;q=1", 1},
		{"*/*", 0},
		{"application/*", 0},
		{"application/json", 0},
		{"application/problem+json;q=0", 0},
		{"application/problem+json; q=0.000, */*", 0},
		{"application/problem+jsonx", 0},
		{"application/problem", 0},
		{"text/plain; x=\"a,application/problem+json\"", 0},
		{"text/plain; x=\"a\\\",application/problem+json\", application/problem+json", 1},
		{"", 0},
	};
	size_t		i;

	memset(&req, 0, sizeof(req));
	req.method = "POST";
	req.path = "/";
	req.headers = h;
	req.nheaders = 2;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
	{
		h[1].value = cases[i].accept;
		CHECK(idem_http_wants_problem(&req) == cases[i].want,
			  "Accept: %s -> %s", cases[i].accept,
			  cases[i].want ? "problem details" : "the application's format");
	}
	req.nheaders = 1;
	CHECK(idem_http_wants_problem(&req) == 0, "no Accept header: 0");
	h[1].value = "text/html";
	h[2].value = "application/problem+json";
	req.nheaders = 3;
	CHECK(idem_http_wants_problem(&req) == 1,
		  "two Accept headers (names without case): either counts");
}

/* ---- the observer, offline ---------------------------------------------- */

typedef struct seen
{
	int			n;
	idem_event	last;
	char		key[64];
	char		sqlstate[6];
	char		message[256];
	idem_op		ops[16];
} seen;

static void
observe(const idem_event *ev, void *arg)
{
	seen	   *s = arg;

	if (s->n < 16)
		s->ops[s->n] = ev->op;
	s->n++;
	s->last = *ev;
	snprintf(s->key, sizeof(s->key), "%s", ev->key ? ev->key : "(null)");
	snprintf(s->sqlstate, sizeof(s->sqlstate), "%s", ev->sqlstate);
	snprintf(s->message, sizeof(s->message), "%s", ev->message);
	/* the strings are gone after the call */
	s->last.key = s->last.scope = s->last.sqlstate = s->last.message = NULL;
}

static void
test_observer_offline(void)
{
	idem_conn  *conn = idem_connect("host=/nonexistent-idem-socket-dir port=1 connect_timeout=2");
	idem_http  *http = idem_http_new();
	idem_http_request req;
	idem_header h = {"Idempotency-Key", "k-1"};
	idem_record *rec = NULL;
	idem_opts	opts = {"tenant-1", NULL, NULL, NULL};
	seen		s;
	int			status;

	CHECK(strcmp(idem_op_name(IDEM_OP_RESERVE), "reserve") == 0 &&
		  strcmp(idem_op_name(IDEM_OP_PURGE), "purge") == 0 &&
		  strcmp(idem_op_name(IDEM_OP_HTTP_RUN), "http_run") == 0 &&
		  strcmp(idem_op_name((idem_op) 99), "unknown") == 0, "op names");
	CHECK(idem_set_observer(NULL, observe, &s) == -1, "idem_set_observer(NULL, ...): -1");

	memset(&s, 0, sizeof(s));
	idem_reserve(conn, "k-1", &opts, NULL);
	CHECK(s.n == 0, "no observer: no call");
	CHECK(idem_set_observer(conn, observe, &s) == 0, "set an observer");
	idem_reserve(conn, "k-1", &opts, &rec);
	CHECK(s.n == 1 && s.last.op == IDEM_OP_RESERVE && s.last.outcome == IDEM_ERROR &&
		  s.last.error == IDEM_ERR_CONNECTION && strcmp(s.key, "k-1") == 0 &&
		  s.sqlstate[0] == '\0' && s.message[0] != '\0' && s.last.attempt == 0 &&
		  s.last.waited == 0 && s.last.duration_us >= 0 && s.last.state == NULL,
		  "reserve on a dead handle: one event, error, connection (%s)", s.message);
	idem_reserve(conn, NULL, NULL, NULL);
	CHECK(s.n == 2 && s.last.error == IDEM_ERR_BAD_INPUT && strcmp(s.key, "(null)") == 0,
		  "a NULL key, decided locally: one event, bad input");
	idem_commit(conn, "k-1", NULL, 200, "x", 1, NULL);
	idem_release(conn, "k-1", NULL);
	idem_get(conn, "k-1", NULL, &rec);
	idem_extend(conn, "k-1", NULL, NULL);
	idem_purge(conn, 10);
	CHECK(s.n == 7 && s.ops[2] == IDEM_OP_COMMIT && s.ops[3] == IDEM_OP_RELEASE &&
		  s.ops[4] == IDEM_OP_GET && s.ops[5] == IDEM_OP_EXTEND &&
		  s.ops[6] == IDEM_OP_PURGE && s.last.outcome == IDEM_ERROR &&
		  strcmp(s.key, "(null)") == 0 && s.last.count == 0,
		  "commit, release, get, extend, purge: one event each");

	memset(&req, 0, sizeof(req));
	req.method = "GET";
	req.path = "/v1/x";
	req.headers = &h;
	req.nheaders = 1;
	req.scope = "tenant-1";
	s.n = 0;
	idem_http_run(conn, http, &req, echo_handler, "hi", &rec, &status);
	CHECK(s.n == 1 && s.last.op == IDEM_OP_HTTP_RUN && s.last.outcome == IDEM_FRESH &&
		  s.last.status == 201 && s.last.state && strcmp(s.last.state, "bypassed") == 0 &&
		  strcmp(s.key, "k-1") == 0,
		  "a bypassed request: one http_run event, fresh, 201, bypassed");
	idem_record_free(rec);
	req.method = "POST";
	req.nheaders = 0;
	idem_http_set_required(http, 1);
	s.n = 0;
	idem_http_run(conn, http, &req, echo_handler, "hi", &rec, &status);
	CHECK(s.n == 1 && s.last.op == IDEM_OP_HTTP_RUN && s.last.outcome == IDEM_ERROR &&
		  s.last.error == IDEM_ERR_BAD_INPUT && s.last.status == 400 &&
		  strcmp(s.key, "(null)") == 0,
		  "a request refused for its missing key: one event, 400, no key");
	s.n = 0;
	idem_step(conn, "charge", NULL, echo_handler, "x", &rec);
	CHECK(s.n == 1 && s.last.op == IDEM_OP_STEP && s.last.error == IDEM_ERR_NO_RUN &&
		  strcmp(s.key, "(null)") == 0, "a step without a run id: one event, no key");

	CHECK(idem_set_observer(conn, NULL, &s) == 0, "remove the observer");
	s.n = 0;
	idem_reserve(conn, "k-1", NULL, NULL);
	idem_purge(conn, 0);
	CHECK(s.n == 0, "removed: no call");

	idem_http_free(http);
	idem_free(conn);
}

/*
 * A handle whose server is unreachable: the connection error is on the
 * handle, every call fails with IDEM_ERR_CONNECTION, and the HTTP helper
 * still serves requests that bypass the store.
 */
static void
test_unreachable(void)
{
	idem_conn  *conn = idem_connect("host=/nonexistent-idem-socket-dir port=1 connect_timeout=2");
	idem_record *rec = (idem_record *) 1;
	idem_http  *http = idem_http_new();
	idem_http_request req;
	idem_header h = {"Idempotency-Key", "k"};
	idem_outcome o;
	int			status;
	size_t		len;
	const char *body;

	CHECK(conn != NULL, "idem_connect returns a handle even when it fails");
	CHECK(!idem_connected(conn), "not connected");
	CHECK(idem_errcode(conn) == IDEM_ERR_CONNECTION && *idem_errmsg(conn),
		  "connect error: %s", idem_errmsg(conn));
	CHECK(idem_pgconn(conn) != NULL, "the PGconn is there to inspect");

	o = idem_reserve(conn, "k", NULL, &rec);
	CHECK(o == IDEM_ERROR && rec == NULL &&
		  idem_errcode(conn) == IDEM_ERR_CONNECTION &&
		  strcmp(idem_sqlstate(conn), "") == 0,
		  "reserve on a dead handle: IDEM_ERROR / connection, no SQLSTATE");
	CHECK(idem_get(conn, "k", NULL, &rec) == IDEM_ERROR && rec == NULL,
		  "get on a dead handle");
	CHECK(idem_commit(conn, "k", NULL, 200, "x", 1, NULL) == IDEM_ERROR,
		  "commit on a dead handle");
	CHECK(idem_release(conn, "k", NULL) == IDEM_ERROR, "release on a dead handle");
	CHECK(idem_purge(conn, 0) == -1 && idem_errcode(conn) == IDEM_ERR_CONNECTION,
		  "purge on a dead handle");
	CHECK(idem_reserve(conn, NULL, NULL, NULL) == IDEM_ERROR &&
		  idem_errcode(conn) == IDEM_ERR_BAD_INPUT,
		  "NULL key: bad input, checked before sending");
	CHECK(idem_reconnect(conn) == -1 && idem_errcode(conn) == IDEM_ERR_CONNECTION,
		  "reconnect fails while the server is gone");

	/* owners and leases need no server until a call */
	{
		idem_conn  *other = idem_connect("host=/nonexistent-idem-socket-dir port=1 connect_timeout=2");
		char		lease[8] = "45s";

		CHECK(strlen(idem_owner(conn)) == 32 &&
			  strspn(idem_owner(conn), "0123456789abcdef") == 32 &&
			  strcmp(idem_owner(conn), idem_owner(other)) != 0,
			  "each handle has its own owner token, 32 hex digits");
		CHECK(idem_lease(conn) == NULL && idem_set_lease(conn, lease) == 0 &&
			  (lease[0] = 'x') && strcmp(idem_lease(conn), "45s") == 0 &&
			  idem_set_lease(conn, NULL) == 0 && idem_lease(conn) == NULL,
			  "idem_set_lease copies its argument; NULL is automatic");
		CHECK(idem_proxied(conn) == -1 && idem_uses_leases(conn) == -1 &&
			  idem_errcode(conn) == IDEM_ERR_CONNECTION,
			  "proxied / uses_leases need the server: -1, connection error");
		CHECK(idem_extend(conn, "k", NULL, NULL) == IDEM_ERROR &&
			  idem_errcode(conn) == IDEM_ERR_CONNECTION, "extend on a dead handle");
		CHECK(idem_extend(conn, NULL, NULL, NULL) == IDEM_ERROR &&
			  idem_errcode(conn) == IDEM_ERR_BAD_INPUT, "extend: NULL key");
		idem_free(other);
	}

	/* steps need a run id before anything else */
	{
		char		key[IDEM_HASH_SIZE];

		CHECK(idem_step(conn, "charge", NULL, echo_handler, "x", &rec) == IDEM_ERROR &&
			  rec == NULL && idem_errcode(conn) == IDEM_ERR_NO_RUN &&
			  strstr(idem_errmsg(conn), "idem_set_run_id") != NULL,
			  "step without a run id: clear error (%s)", idem_errmsg(conn));
		CHECK(idem_step_key(conn, "charge", key) == -1 &&
			  idem_errcode(conn) == IDEM_ERR_NO_RUN, "step key without a run id");
		CHECK(idem_set_run_id(conn, "run-1") == 0 &&
			  strcmp(idem_run_id(conn), "run-1") == 0, "set a run id");
		CHECK(idem_step_key(conn, "charge", key) == 0 &&
			  strcmp(key, "94c650aebe353f0dbe2fd9c01843afbcd85fabbf00879188448739c4bee5afe9") == 0,
			  "step key = derive_key(run id, step)");
		CHECK(idem_step_key(conn, NULL, key) == -1 &&
			  idem_errcode(conn) == IDEM_ERR_BAD_INPUT, "NULL step name");
		CHECK(idem_set_run_id(conn, NULL) == 0 && idem_run_id(conn) == NULL,
			  "clear the run id");
	}

	/* bypassed requests never touch the store */
	memset(&req, 0, sizeof(req));
	req.method = "GET";
	req.path = "/v1/charges";
	req.headers = &h;
	req.nheaders = 1;
	o = idem_http_run(conn, http, &req, echo_handler, "hello", &rec, &status);
	CHECK(o == IDEM_FRESH && rec && status == 201 &&
		  strcmp(idem_record_state(rec), "bypassed") == 0,
		  "GET bypasses: handler runs, status 201");
	body = rec ? idem_record_body(rec, &len) : NULL;
	CHECK(body && len == 5 && memcmp(body, "hello", 5) == 0 &&
		  ((const char *) body)[5] == '\0', "bypass body, NUL-terminated");
	CHECK(rec && idem_record_header_count(rec) == 3 &&
		  strcmp(idem_record_header(rec, "content-type"), "text/plain") == 0 &&
		  idem_record_header(rec, "Set-Cookie") == NULL &&
		  strcmp(idem_record_header_name(rec, 1), "X-Multi") == 0 &&
		  strcmp(idem_record_header_value(rec, 1), "1") == 0 &&
		  strcmp(idem_record_header_value(rec, 2), "2 \"two\"") == 0,
		  "headers parsed back: repeated values kept, Set-Cookie dropped");
	idem_record_free(rec);

	o = idem_http_run(conn, http, &req, failing_handler, NULL, &rec, &status);
	CHECK(o == IDEM_ERROR && rec == NULL && status == 500 &&
		  idem_errcode(conn) == IDEM_ERR_HANDLER,
		  "bypassed handler failing: 500, IDEM_ERR_HANDLER");

	req.method = "POST";
	o = idem_http_run(conn, http, &req, echo_handler, "hello", &rec, &status);
	CHECK(o == IDEM_ERROR && rec == NULL && status == 503 &&
		  idem_errcode(conn) == IDEM_ERR_CONNECTION,
		  "guarded POST with the database gone: 503");

	idem_http_set_required(http, 1);
	req.nheaders = 0;
	o = idem_http_run(conn, http, &req, echo_handler, "hello", &rec, &status);
	CHECK(o == IDEM_ERROR && rec == NULL && status == 400 &&
		  idem_errcode(conn) == IDEM_ERR_BAD_INPUT,
		  "required header missing: 400 (%s)", idem_errmsg(conn));

	idem_http_free(http);
	idem_free(conn);
	idem_free(NULL);
	idem_record_free(NULL);
	idem_response_free(NULL);
	idem_http_free(NULL);
	CHECK(idem_wrap(NULL) == NULL, "idem_wrap(NULL) is NULL");
}

int
main(void)
{
	test_derive_key();
	test_request_hash();
	test_names();
	test_response_headers();
	test_http_decisions();
	test_problem_details();
	test_accept();
	test_unreachable();
	test_observer_offline();
	return tt_finish();
}
