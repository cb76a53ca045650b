/*-------------------------------------------------------------------------
 *
 * fuzz_conninfo.c
 *	  libFuzzer harness: connection strings, libpq's environment, and the
 *	  library's handling of libpq's error messages.
 *
 * What libidem itself parses here is little: idem_connect hands the
 * conninfo to libpq untouched (as an expandable dbname: a connection
 * string, a URI or a bare database name, or "" for the environment), and
 * splits libpq's multi-line error messages into idem_errmsg (the first
 * line) and idem_errdetail (the other lines, joined); server errors are
 * mapped from their SQLSTATE.  This harness checks all of it:
 *
 *	'M' + text: the text as a libpq error message through
 *	set_client_message and idem__copy_trimmed (fixed 1024-byte buffers), and
 *	its first five bytes through map_sqlstate, against a reference.
 *
 *	anything else: line 1 is a conninfo, the other lines set variables of
 *	libpq's environment (the first byte picks one of a fixed list, the
 *	rest is the value); idem_connect runs with them.  The connection
 *	itself is pointed at 127.0.0.1 port 1 (refused at once) by wrapping
 *	PQconnectdbParams (-Wl,--wrap): later keywords override what the
 *	conninfo expands to, so nothing leaves the machine whatever the
 *	input says.  The wrapper checks that libidem passed the conninfo
 *	through unchanged; then the handle must report a clean
 *	IDEM_ERR_CONNECTION (one-line message, detail without newlines), a
 *	call on it must fail the same way without crashing, and
 *	idem_reconnect too.
 *
 * The library is linked into the harness; the functions tried here are its
 * internal ones of idem_error.c (idem__*, declared in idem_int.h).
 *
 *-------------------------------------------------------------------------
 */
#include "idem_int.h"
#include "fuzz.h"

#define MAX_LINES 16

/* variables of libpq's environment that name no file to read */
static const char *const env_names[] = {
	"PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD",
	"PGAPPNAME", "PGOPTIONS", "PGSSLMODE", "PGREQUIRESSL", "PGGSSENCMODE",
	"PGCONNECT_TIMEOUT", "PGCLIENTENCODING", "PGTARGETSESSIONATTRS",
	"PGSERVICE", "PGCHANNELBINDING", "PGKRBSRVNAME", "PGTZ", "PGDATESTYLE",
	"PGSSLCOMPRESSION", "PGSSLSNI", "PGSSLMINPROTOCOLVERSION",
	"PGSSLMAXPROTOCOLVERSION", "PGGSSLIB",
};
#define N_ENV (sizeof(env_names) / sizeof(env_names[0]))

/* what the wrapper saw */
static const char *expected_conninfo;
static int	wrapper_calls;

PGconn	   *__real_PQconnectdbParams(const char *const *keywords,
									 const char *const *values, int expand_dbname);
PGconn	   *__wrap_PQconnectdbParams(const char *const *keywords,
									 const char *const *values, int expand_dbname);

PGconn *
__wrap_PQconnectdbParams(const char *const *keywords,
						 const char *const *values, int expand_dbname)
{
	const char *k[16];
	const char *v[16];
	int			n = 0;

	wrapper_calls++;
	FUZZ_CHECK(expand_dbname == 1, "expand_dbname %d", expand_dbname);
	FUZZ_CHECK(keywords[0] && strcmp(keywords[0], "dbname") == 0, "first keyword");
	FUZZ_CHECK(strcmp(values[0], expected_conninfo) == 0,
			   "the conninfo was not passed through: \"%s\", want \"%s\"",
			   values[0], expected_conninfo);
	FUZZ_CHECK(keywords[1] && strcmp(keywords[1], "fallback_application_name") == 0 &&
			   strcmp(values[1], "libidem") == 0, "fallback_application_name");
	FUZZ_CHECK(keywords[2] == NULL, "more keywords than expected");

	for (n = 0; keywords[n]; n++)
	{
		k[n] = keywords[n];
		v[n] = values[n];
	}
	/* later keywords win over the expanded dbname: nowhere but here */
	k[n] = "host";
	v[n++] = "127.0.0.1";
	k[n] = "hostaddr";
	v[n++] = "127.0.0.1";
	k[n] = "port";
	v[n++] = "1";
	k[n] = "connect_timeout";
	v[n++] = "2";
	k[n] = NULL;
	v[n] = NULL;
	return __real_PQconnectdbParams(k, v, expand_dbname);
}

/* ---- messages ---------------------------------------------------------- */

static idem_error
ref_map(const char *s)
{
	static const struct
	{
		const char *state;
		idem_error	err;
	}			exact[] = {
		{"IK422", IDEM_ERR_MISMATCH}, {"IK409", IDEM_ERR_IN_FLIGHT},
		{"IK404", IDEM_ERR_NOT_FOUND}, {"54000", IDEM_ERR_TOO_LARGE},
		{"25006", IDEM_ERR_READ_ONLY}, {"42883", IDEM_ERR_NO_EXTENSION},
		{"42704", IDEM_ERR_NO_EXTENSION}, {"3F000", IDEM_ERR_NO_EXTENSION},
		{"57P01", IDEM_ERR_CONNECTION}, {"57P02", IDEM_ERR_CONNECTION},
		{"57P03", IDEM_ERR_CONNECTION},
	};
	size_t		i;

	for (i = 0; i < sizeof(exact) / sizeof(exact[0]); i++)
		if (strcmp(s, exact[i].state) == 0)
			return exact[i].err;
	if (s[0] == '2' && s[1] == '2')
		return IDEM_ERR_BAD_INPUT;
	if (s[0] == '0' && s[1] == '8')
		return IDEM_ERR_CONNECTION;
	return IDEM_ERR_SERVER;
}

static void
fuzz_message(const uint8_t *data, size_t size)
{
	char	   *msg = fuzz_strndup(data, size);
	idem_conn  *conn = idem__conn_new(NULL, 0);
	size_t		first = strcspn(msg, "\n"),
				n,
				i;
	char		buf[64];
	char		state[6];

	FUZZ_CHECK(conn != NULL, "conn_new");

	/* errmsg: the first line, cut to the buffer; errdetail: the rest */
	idem__set_client_message(conn, msg);
	n = strlen(conn->errmsg);
	FUZZ_CHECK(n < sizeof(conn->errmsg), "errmsg overflow");
	FUZZ_CHECK(n == (first < sizeof(conn->errmsg) ? first : sizeof(conn->errmsg) - 1) &&
			   memcmp(conn->errmsg, msg, n) == 0, "errmsg is not the first line");
	FUZZ_CHECK(strchr(conn->errmsg, '\n') == NULL, "newline in errmsg");
	n = strlen(conn->errdetail);
	FUZZ_CHECK(n < sizeof(conn->errdetail), "errdetail overflow");
	FUZZ_CHECK(strpbrk(conn->errdetail, "\n\t") == NULL, "newline or tab in errdetail");
	FUZZ_CHECK(n == 0 || conn->errdetail[n - 1] != ' ', "trailing space in errdetail");
	if (msg[first] == '\0')
		FUZZ_CHECK(n == 0, "a one-line message has a detail");
	else
	{
		/* the detail is the rest with newlines and tabs made spaces,
		 * runs of them one space, trailing ones dropped, when it fits */
		char	   *want = fuzz_xmalloc(strlen(msg) + 1);
		size_t		w = 0;
		const char *p;

		for (p = msg + first; *p; p++)
		{
			if (*p == '\n' || *p == '\t')
			{
				if (w > 0 && want[w - 1] != ' ')
					want[w++] = ' ';
				continue;
			}
			want[w++] = *p;
		}
		while (w > 0 && want[w - 1] == ' ')
			w--;
		want[w] = '\0';
		if (w < sizeof(conn->errdetail) - 1)
			FUZZ_CHECK(strcmp(conn->errdetail, want) == 0,
					   "errdetail \"%s\", want \"%s\"", conn->errdetail, want);
		else
			FUZZ_CHECK(strncmp(conn->errdetail, want, n) == 0,
					   "errdetail is not a prefix of the joined lines");
		free(want);
	}

	/* a NULL message */
	idem__set_client_message(conn, NULL);
	FUZZ_CHECK(conn->errmsg[0] == '\0', "NULL message");

	/* copy_trimmed: a prefix, without trailing newlines or spaces */
	idem__copy_trimmed(buf, sizeof(buf), msg);
	n = strlen(buf);
	FUZZ_CHECK(n < sizeof(buf) && strncmp(buf, msg, n) == 0, "copy_trimmed prefix");
	FUZZ_CHECK(n == 0 || (buf[n - 1] != '\n' && buf[n - 1] != ' '), "copy_trimmed trailing");
	idem__copy_trimmed(buf, sizeof(buf), NULL);
	FUZZ_CHECK(buf[0] == '\0', "idem__copy_trimmed(NULL)");

	/* the SQLSTATE mapping */
	memset(state, 0, sizeof(state));
	for (i = 0; i < 5 && i < size; i++)
		state[i] = (char) data[i];
	FUZZ_CHECK(idem__map_sqlstate(state) == ref_map(state), "idem__map_sqlstate(\"%s\")", state);

	/* idem__set_error with the text as an argument (never as a format) */
	idem__set_error(conn, IDEM_ERR_SERVER, "%s", msg);
	FUZZ_CHECK(strlen(conn->errmsg) < sizeof(conn->errmsg) &&
			   strncmp(conn->errmsg, msg, strlen(conn->errmsg)) == 0, "set_error");

	idem_free(conn);
	free(msg);
}

/* ---- connecting -------------------------------------------------------- */

static void
fuzz_connect(const uint8_t *data, size_t size)
{
	fuzz_lines	l;
	int			set[N_ENV];
	size_t		i;
	idem_conn  *conn;
	idem_record *rec = (idem_record *) 1;
	const char *conninfo;

	static int	cleaned;

	/* the same start every time, whatever environment we were run in */
	if (!cleaned)
	{
		for (i = 0; i < N_ENV; i++)
			unsetenv(env_names[i]);
		cleaned = 1;
	}
	memset(set, 0, sizeof(set));
	fuzz_split_lines(data, size, MAX_LINES, &l);
	conninfo = size == 0 ? NULL : l.line[0];
	for (i = 1; i < l.n; i++)
	{
		size_t		e;

		if (l.line[i][0] == '\0')
			continue;
		e = (unsigned char) l.line[i][0] % N_ENV;
		setenv(env_names[e], l.line[i] + 1, 1);
		set[e] = 1;
	}

	expected_conninfo = conninfo ? conninfo : "";
	wrapper_calls = 0;
	conn = idem_connect(conninfo);
	FUZZ_CHECK(conn != NULL, "idem_connect returned NULL");
	FUZZ_CHECK(wrapper_calls == 1, "PQconnectdbParams called %d times", wrapper_calls);
	FUZZ_CHECK(!idem_connected(conn), "connected to port 1?");
	FUZZ_CHECK(idem_errcode(conn) == IDEM_ERR_CONNECTION, "errcode %s",
			   idem_error_name(idem_errcode(conn)));
	FUZZ_CHECK(*idem_errmsg(conn) != '\0', "empty errmsg");
	FUZZ_CHECK(strchr(idem_errmsg(conn), '\n') == NULL, "newline in errmsg");
	FUZZ_CHECK(strpbrk(idem_errdetail(conn), "\n\t") == NULL, "newline in errdetail");
	FUZZ_CHECK(*idem_sqlstate(conn) == '\0', "a sqlstate without a server");

	FUZZ_CHECK(idem_reserve(conn, "k", NULL, &rec) == IDEM_ERROR && rec == NULL &&
			   idem_errcode(conn) == IDEM_ERR_CONNECTION, "reserve on a dead handle");
	FUZZ_CHECK(idem_purge(conn, 0) == -1 && idem_errcode(conn) == IDEM_ERR_CONNECTION,
			   "purge on a dead handle");
	if (l.n > 0 && l.len[0] % 4 == 0)
	{
		FUZZ_CHECK(idem_reconnect(conn) == -1 &&
				   idem_errcode(conn) == IDEM_ERR_CONNECTION, "reconnect");
		FUZZ_CHECK(strchr(idem_errmsg(conn), '\n') == NULL, "newline in errmsg");
	}
	idem_free(conn);

	for (i = 0; i < N_ENV; i++)
		if (set[i])
			unsetenv(env_names[i]);
	fuzz_free_lines(&l);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 0 && data[0] == 'M')
		fuzz_message(data + 1, size - 1);
	else
		fuzz_connect(data, size);
	return 0;
}
