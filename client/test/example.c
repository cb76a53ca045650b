/*
 * example.c: the "use from C" example of README.md, verbatim;
 * test/suites/client.sh checks that, compiles it against the installed
 * library with
 *   cc example.c $(pkg-config --cflags --libs libidem) -o example
 * and runs it twice: the first run charges, the second replays.
 */
#include <stdio.h>
#include <string.h>
#include <idem.h>

/* the side effect: runs at most once per key */
static int
charge(idem_response *resp, void *arg)
{
	char body[128];

	snprintf(body, sizeof(body), "{\"order\": \"%s\", \"charged\": 100}", (const char *) arg);
	idem_response_set_status(resp, 201);
	idem_response_add_header(resp, "Content-Type", "application/json");
	return idem_response_set_body(resp, body, strlen(body));	/* 0: store it */
}

int
main(int argc, char **argv)
{
	const char *order = argc > 1 ? argv[1] : "order-42";
	idem_opts	opts = {0};
	idem_record *rec = NULL;
	idem_conn  *conn = idem_connect(NULL);	/* PGHOST, PGDATABASE ... like psql */
	idem_outcome outcome;

	if (!idem_connected(conn))
	{
		fprintf(stderr, "connect: %s\n", idem_errmsg(conn));
		idem_free(conn);
		return 1;
	}
	opts.scope = "shop";
	opts.wait = "10s";
	outcome = idem_run(conn, order, &opts, charge, (void *) order, &rec);
	if (outcome == IDEM_FRESH || outcome == IDEM_REPLAY)
		printf("%s: %d %s\n", idem_outcome_name(outcome),
			   idem_record_status(rec), (const char *) idem_record_body(rec, NULL));
	else
		fprintf(stderr, "%s: %s (SQLSTATE %s)\n", idem_outcome_name(outcome),
				idem_errmsg(conn), idem_sqlstate(conn));
	idem_record_free(rec);
	idem_free(conn);
	return outcome == IDEM_FRESH || outcome == IDEM_REPLAY ? 0 : 1;
}
