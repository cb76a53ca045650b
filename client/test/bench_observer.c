/*-------------------------------------------------------------------------
 *
 * bench_observer.c
 *	  What an observer costs a call: idem_reserve of committed keys (a
 *	  replay, one round trip) on three handles, one whose observer was
 *	  never set, one whose observer was set and then set to NULL, and one
 *	  with an observer that does nothing; then the same without a server
 *	  (a NULL key: the call is decided by the library, no round trip), where
 *	  the few nanoseconds of the check and the clock reads are not hidden
 *	  by the network.  The modes take turns, round after round (in another
 *	  order each round), so that drift of the machine falls on all of them
 *	  alike; each mode's time per call is the median of its rounds, with
 *	  the fastest round beside it, since a shared machine adds bursts.
 *
 *	  make -C client bench-observer [BENCH_CALLS=100000] [BENCH_LOCAL=10000000]
 *
 * The server comes from libpq's environment (PGHOST, PGPORT, ...), with
 * the idempotency extension.
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "idem.h"

#define NKEYS 100
#define ROUNDS 20

static const char *const mode_name[3] = {
	"observer never set", "observer set to NULL", "no-op observer"
};

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
noop(const idem_event *ev, void *arg)
{
	(void) ev;
	(void) arg;
}

static long
env_long(const char *name, long dflt)
{
	const char *v = getenv(name);

	return v && atol(v) > 0 ? atol(v) : dflt;
}

/* one handle per mode, observers set as the mode says */
static void
set_mode(idem_conn *conn, int mode)
{
	if (mode >= 1)
		idem_set_observer(conn, noop, NULL);
	if (mode == 1)
		idem_set_observer(conn, NULL, NULL);
}

static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a,
				y = *(const double *) b;

	return x < y ? -1 : x > y;
}

/* round[m][r]: seconds of round r of mode m, per_round calls each */
static void
report(const char *what, double round[3][ROUNDS], long per_round, double unit,
	   const char *unit_name)
{
	double		median[3],
				best[3];
	int			m;

	for (m = 0; m < 3; m++)
	{
		qsort(round[m], ROUNDS, sizeof(double), cmp_double);
		median[m] = (round[m][ROUNDS / 2 - 1] + round[m][ROUNDS / 2]) / 2 /
			per_round * unit;
		best[m] = round[m][0] / per_round * unit;
	}
	printf("%s, %ld calls per mode in %d rounds:\n", what, per_round * ROUNDS,
		   ROUNDS);
	for (m = 0; m < 3; m++)
		printf("  %-22s median %9.3f %s per call (%+6.2f%%), fastest round %9.3f %s (%+6.2f%%)\n",
			   mode_name[m], median[m], unit_name,
			   (median[m] / median[0] - 1) * 100, best[m], unit_name,
			   (best[m] / best[0] - 1) * 100);
}

int
main(void)
{
	long		calls = env_long("BENCH_CALLS", 100000);
	long		local = env_long("BENCH_LOCAL", 10000000);
	idem_conn  *conn[3];
	char		keys[NKEYS][64];
	static double round[3][ROUNDS];
	long		per_round = calls / ROUNDS;
	int			m,
				r;
	long		i;

	for (m = 0; m < 3; m++)
	{
		conn[m] = idem_connect(NULL);
		if (conn[m] == NULL || !idem_connected(conn[m]))
		{
			fprintf(stderr, "bench_observer: cannot connect: %s\n",
					idem_errmsg(conn[m]));
			return 1;
		}
		set_mode(conn[m], m);
	}
	for (i = 0; i < NKEYS; i++)
	{
		snprintf(keys[i], sizeof(keys[i]), "bench-observer-%ld-%ld",
				 (long) getpid(), i);
		if (idem_reserve(conn[0], keys[i], NULL, NULL) != IDEM_FRESH ||
			idem_commit(conn[0], keys[i], NULL, 200, "ok", 2, NULL) != IDEM_FRESH)
		{
			fprintf(stderr, "bench_observer: setup: %s\n", idem_errmsg(conn[0]));
			return 1;
		}
	}
	/* warm up: every statement prepared on every handle */
	for (m = 0; m < 3; m++)
		for (i = 0; i < 1000; i++)
			idem_reserve(conn[m], keys[i % NKEYS], NULL, NULL);

	for (r = 0; r < ROUNDS; r++)
		for (m = 0; m < 3; m++)
		{
			int			mm = (m + r) % 3;	/* a different order each round */
			double		t0 = now_s();

			for (i = 0; i < per_round; i++)
				if (idem_reserve(conn[mm], keys[i % NKEYS], NULL, NULL) != IDEM_REPLAY)
				{
					fprintf(stderr, "bench_observer: %s\n", idem_errmsg(conn[mm]));
					return 1;
				}
			round[mm][r] = now_s() - t0;
		}
	report("idem_reserve of a committed key (replay, one round trip)", round,
		   per_round, 1e6, "us");

	per_round = local / ROUNDS;
	for (r = 0; r < ROUNDS; r++)
		for (m = 0; m < 3; m++)
		{
			int			mm = (m + r) % 3;
			double		t0 = now_s();

			for (i = 0; i < per_round; i++)
				idem_reserve(conn[mm], NULL, NULL, NULL);
			round[mm][r] = now_s() - t0;
		}
	report("idem_reserve with a NULL key (decided by the library, no round trip)",
		   round, per_round, 1e9, "ns");

	/* the keys stay until idem.default_ttl has passed */
	for (m = 0; m < 3; m++)
		idem_free(conn[m]);
	return 0;
}
