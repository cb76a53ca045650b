/*-------------------------------------------------------------------------
 *
 * tinytest.h
 *	  The smallest test runner that CI understands: one "ok - ..." or
 *	  "not ok - ..." line per check, then "N passed, M failed" last.
 *
 *	  CHECK(cond, fmt, ...)   one check, described by fmt
 *	  tt_finish()             prints the summary; the exit status for main
 *
 *-------------------------------------------------------------------------
 */
#ifndef TINYTEST_H
#define TINYTEST_H

#include <stdarg.h>
#include <stdio.h>

static int	tt_passed;
static int	tt_failed;

static void tt_check(int cond, const char *file, int line, const char *expr,
					 const char *fmt,...) __attribute__((format(printf, 5, 6)));

static void
tt_check(int cond, const char *file, int line, const char *expr,
		 const char *fmt,...)
{
	va_list		ap;

	printf("%s - ", cond ? "ok" : "not ok");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	if (cond)
		tt_passed++;
	else
	{
		tt_failed++;
		printf("#   %s:%d: failed: %s\n", file, line, expr);
	}
	fflush(stdout);
}

#define CHECK(cond, ...) \
	tt_check((cond) ? 1 : 0, __FILE__, __LINE__, #cond, __VA_ARGS__)

static int
tt_finish(void)
{
	printf("%d passed, %d failed\n", tt_passed, tt_failed);
	return tt_failed == 0 ? 0 : 1;
}

#endif							/* TINYTEST_H */
