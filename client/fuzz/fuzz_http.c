/*-------------------------------------------------------------------------
 *
 * fuzz_http.c
 *	  libFuzzer harness: the HTTP policy of libidem, differential.
 *
 * Drives idem_http_exclude, idem_http_set_header_name / _required /
 * _cache_failures, idem_http_decide (method guard, route exclusions,
 * request-header lookup, key checks) and idem_http_cacheable, and compares
 * every answer with a reference written here from the README's wording:
 *
 *	a rule is "METHOD /path": METHOD letters or "*", one or more spaces, a
 *	path starting with '/' and holding no space, optional trailing spaces;
 *	a path ending in '*' is a prefix.  The request path is matched without
 *	its query string (or fragment).  POST, PUT, PATCH and DELETE are
 *	guarded (any case).  The key is the value of the first header whose
 *	name equals the policy's header name without case.
 *
 * Input: lines; the first character of each says what it is.
 *	X<rule>		an exclusion rule			N<name>	the key header's name
 *	Q			header required				C		cache failures
 *	m<method>	the request's method		p<path>	the request's path
 *	h<name>:<value>	a request header (no ':' = a NULL value)
 *	n			a header with a NULL name	s<int>	a status for cacheable
 *	D			decide now (also done at the end)
 *
 *-------------------------------------------------------------------------
 */
#include <ctype.h>

#include "idem.h"
#include "fuzz.h"

#define MAX_LINES 64
#define MAX_RULES 32
#define MAX_HDRS 32

typedef struct ref_rule
{
	char	   *method;
	char	   *path;			/* without the '*' of a prefix */
	int			prefix;
} ref_rule;

typedef struct ref_policy
{
	const char *header;
	int			required;
	int			cache_failures;
	ref_rule	rule[MAX_RULES];
	size_t		nrules;
} ref_policy;

/* the README's grammar; 1 and the parsed rule when well formed */
static int
ref_parse_rule(const char *rule, ref_rule *out)
{
	size_t		m = 0,
				p,
				end;

	while (rule[m] && rule[m] != ' ')
		m++;
	if (m == 0 || rule[m] != ' ')
		return 0;
	if (!(m == 1 && rule[0] == '*'))
	{
		size_t		i;

		for (i = 0; i < m; i++)
			if (!((rule[i] >= 'a' && rule[i] <= 'z') ||
				  (rule[i] >= 'A' && rule[i] <= 'Z')))
				return 0;
	}
	p = m;
	while (rule[p] == ' ')
		p++;
	end = strlen(rule);
	while (end > p && rule[end - 1] == ' ')
		end--;
	if (end == p || rule[p] != '/')
		return 0;
	if (memchr(rule + p, ' ', end - p))
		return 0;
	out->method = fuzz_strndup((const uint8_t *) rule, m);
	out->prefix = rule[end - 1] == '*';
	out->path = fuzz_strndup((const uint8_t *) rule + p,
							 end - p - (out->prefix ? 1 : 0));
	return 1;
}

static int
ref_guarded(const char *method)
{
	return method && (fuzz_caseeq(method, "POST") || fuzz_caseeq(method, "PUT") ||
					  fuzz_caseeq(method, "PATCH") || fuzz_caseeq(method, "DELETE"));
}

static int
ref_excluded(const ref_policy *pol, const char *method, const char *path)
{
	size_t		plen = 0,
				i;

	while (path[plen] && path[plen] != '?' && path[plen] != '#')
		plen++;
	for (i = 0; i < pol->nrules; i++)
	{
		const ref_rule *r = &pol->rule[i];
		size_t		rlen = strlen(r->path);

		if (!(strcmp(r->method, "*") == 0 || fuzz_caseeq(r->method, method)))
			continue;
		if (r->prefix)
		{
			if (plen >= rlen && strncmp(path, r->path, rlen) == 0)
				return 1;
		}
		else if (plen == rlen && strncmp(path, r->path, rlen) == 0)
			return 1;
	}
	return 0;
}

static void
check_decide(const idem_http *http, const ref_policy *pol,
			 const idem_http_request *req)
{
	const char *key = (const char *) 1;
	const char *reason = NULL;
	int			status = -1;
	idem_http_action got,
				want;
	const char *want_key = NULL;
	size_t		i;

	got = idem_http_decide(http, req, &key, &status, &reason);

	if (!ref_guarded(req->method))
		want = IDEM_HTTP_BYPASS;
	else if (req->path && ref_excluded(pol, req->method, req->path))
		want = IDEM_HTTP_BYPASS;
	else
	{
		const char *value = NULL;

		for (i = 0; i < req->nheaders; i++)
			if (req->headers[i].name &&
				fuzz_caseeq(req->headers[i].name, pol->header))
			{
				value = req->headers[i].value;
				break;
			}
		if (value == NULL)
			want = pol->required ? IDEM_HTTP_REJECT : IDEM_HTTP_BYPASS;
		else if (*value == '\0' || strlen(value) > IDEM_MAX_KEY_BYTES ||
				 req->path == NULL)
			want = IDEM_HTTP_REJECT;
		else
		{
			want = IDEM_HTTP_GUARD;
			want_key = value;
		}
	}

	FUZZ_CHECK(got == want, "decide: got %d, want %d (method \"%s\", path \"%s\")",
			   (int) got, (int) want, req->method ? req->method : "(null)",
			   req->path ? req->path : "(null)");
	FUZZ_CHECK(key == want_key, "decide: key %p, want %p", (const void *) key,
			   (const void *) want_key);
	FUZZ_CHECK(status == (want == IDEM_HTTP_REJECT ? 400 : 0),
			   "decide: status %d for action %d", status, (int) want);
	FUZZ_CHECK(reason != NULL && *reason != '\0', "decide: no reason");

	/* NULL out-pointers are allowed and change nothing */
	FUZZ_CHECK(idem_http_decide(http, req, NULL, NULL, NULL) == want,
			   "decide without out-pointers differs");
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_lines	l;
	idem_http  *http = idem_http_new();
	ref_policy	pol;
	idem_header hdrs[MAX_HDRS];
	char	   *hdr_copies[MAX_HDRS];
	size_t		nhdrs = 0,
				i;
	const char *method = NULL,
			   *path = NULL;
	idem_http_request req;
	int			decided = 0;

	FUZZ_CHECK(http != NULL, "idem_http_new");
	memset(&pol, 0, sizeof(pol));
	pol.header = "Idempotency-Key";
	fuzz_split_lines(data, size, MAX_LINES, &l);

	memset(&req, 0, sizeof(req));
	req.headers = hdrs;

	for (i = 0; i < l.n; i++)
	{
		char	   *s = l.line[i];
		char	   *arg = s[0] ? s + 1 : s;

		switch (s[0])
		{
			case 'X':
				{
					ref_rule	r;
					int			ok = ref_parse_rule(arg, &r);
					int			rc;

					if (pol.nrules == MAX_RULES)
					{
						if (ok)
						{
							free(r.method);
							free(r.path);
						}
						break;
					}
					rc = idem_http_exclude(http, arg);
					FUZZ_CHECK(rc == (ok ? 0 : -1),
							   "exclude \"%s\": returned %d, reference says %s",
							   arg, rc, ok ? "well formed" : "malformed");
					if (ok)
						pol.rule[pol.nrules++] = r;
					break;
				}
			case 'N':
				{
					int			rc = idem_http_set_header_name(http, arg);

					FUZZ_CHECK(rc == (*arg ? 0 : -1), "set_header_name \"%s\": %d",
							   arg, rc);
					if (*arg)
						pol.header = arg;
					break;
				}
			case 'Q':
				idem_http_set_required(http, 1);
				pol.required = 1;
				break;
			case 'C':
				idem_http_set_cache_failures(http, 1);
				pol.cache_failures = 1;
				break;
			case 'm':
				method = arg;
				break;
			case 'p':
				path = arg;
				break;
			case 'h':
			case 'n':
				if (nhdrs < MAX_HDRS)
				{
					char	   *colon = s[0] == 'h' ? strchr(arg, ':') : NULL;

					hdr_copies[nhdrs] = NULL;
					hdrs[nhdrs].name = s[0] == 'h' ? arg : NULL;
					hdrs[nhdrs].value = NULL;
					if (colon)
					{
						*colon = '\0';
						hdrs[nhdrs].value = colon + 1;
					}
					else if (s[0] == 'n')
						hdrs[nhdrs].value = arg;
					nhdrs++;
				}
				break;
			case 's':
				{
					long		st = strtol(arg, NULL, 10);
					int			want;

					if (st < -100000 || st > 100000)
						break;
					want = pol.cache_failures ||
						!((st >= 500 && st <= 599) || st == 429);
					FUZZ_CHECK(idem_http_cacheable(http, (int) st) == want,
							   "cacheable(%ld)", st);
					break;
				}
			case 'D':
				req.method = method;
				req.path = path;
				req.nheaders = nhdrs;
				check_decide(http, &pol, &req);
				decided = 1;
				break;
			default:
				break;
		}
	}
	req.method = method;
	req.path = path;
	req.nheaders = nhdrs;
	check_decide(http, &pol, &req);
	(void) decided;
	(void) hdr_copies;

	/*
	 * Probe each rule at its edges with requests derived from it: its path
	 * exactly, one byte shorter and longer, with a slash, a query string or
	 * a fragment, with its method in other cases and with other methods.
	 */
	for (i = 0; i < pol.nrules && i < 4; i++)
	{
		static const char *const methods[] = {"POST", "post", "Delete", "GET"};
		static const char *const suffixes[] = {"", "/", "x", "?a=1", "#f", "?", "/y?z"};
		const ref_rule *r = &pol.rule[i];
		size_t		rl = strlen(r->path),
					m,
					k;
		char	   *probe = fuzz_xmalloc(rl + 8);
		char		rmethod[64];

		snprintf(rmethod, sizeof(rmethod), "%s", r->method);
		for (m = 0; m <= sizeof(methods) / sizeof(methods[0]); m++)
		{
			req.method = m < sizeof(methods) / sizeof(methods[0]) ? methods[m] : rmethod;
			for (k = 0; k < sizeof(suffixes) / sizeof(suffixes[0]); k++)
			{
				snprintf(probe, rl + 8, "%s%s", r->path, suffixes[k]);
				req.path = probe;
				check_decide(http, &pol, &req);
			}
			if (rl > 0)
			{
				memcpy(probe, r->path, rl - 1);
				probe[rl - 1] = '\0';
				req.path = probe;
				check_decide(http, &pol, &req);
			}
		}
		free(probe);
	}

	/* the error-status table, for every outcome and error */
	{
		int			o,
					e;

		for (o = IDEM_FRESH; o <= IDEM_ERROR; o++)
			for (e = IDEM_OK; e <= IDEM_ERR_NOMEM; e++)
			{
				int			st = idem_http_error_status((idem_outcome) o, (idem_error) e);
				int			want;

				if (o == IDEM_FRESH || o == IDEM_REPLAY)
					want = 0;
				else if (o == IDEM_MISMATCH)
					want = 422;
				else if (o == IDEM_IN_FLIGHT)
					want = 409;
				else if (e == IDEM_ERR_BAD_INPUT)
					want = 400;
				else if (e == IDEM_ERR_CONNECTION || e == IDEM_ERR_READ_ONLY)
					want = 503;
				else
					want = 500;
				FUZZ_CHECK(st == want, "error_status(%d, %d) = %d", o, e, st);
			}
	}

	for (i = 0; i < pol.nrules; i++)
	{
		free(pol.rule[i].method);
		free(pol.rule[i].path);
	}
	idem_http_free(http);
	fuzz_free_lines(&l);
	return 0;
}
