/*-------------------------------------------------------------------------
 *
 * replay.c
 *	  A main() for the fuzz harnesses without libFuzzer: feeds each file
 *	  named on the command line (directories: every file in them, in name
 *	  order) to LLVMFuzzerTestOneInput once.  Builds with plain gcc or
 *	  clang, so that the regression inputs and the seed corpora are replayed
 *	  wherever the library builds (make -C client/fuzz regress).
 *
 *	  A harness that finds a problem aborts (FUZZ_CHECK, or a sanitizer):
 *	  the name of the file being replayed is printed before each input so
 *	  that the culprit is the last one named on stderr with -v, and always
 *	  in the message printed on SIGABRT.
 *
 *-------------------------------------------------------------------------
 */
#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *current = "";
static int	verbose;
static long nfiles;

static void
on_abort(int sig)
{
	static const char pre[] = "replay: crashed on input ";

	(void) sig;
	if (write(2, pre, sizeof(pre) - 1) < 0 ||
		write(2, current, strlen(current)) < 0 || write(2, "\n", 1) < 0)
		_exit(134);
	signal(SIGABRT, SIG_DFL);
	raise(SIGABRT);
}

static int
run_file(const char *path)
{
	FILE	   *f = fopen(path, "rb");
	uint8_t    *buf = NULL;
	size_t		len = 0,
				cap = 0,
				n;

	if (f == NULL)
	{
		perror(path);
		return -1;
	}
	for (;;)
	{
		if (len == cap)
		{
			cap = cap ? cap * 2 : 4096;
			buf = realloc(buf, cap);
			if (buf == NULL)
			{
				fprintf(stderr, "replay: out of memory\n");
				exit(2);
			}
		}
		n = fread(buf + len, 1, cap - len, f);
		if (n == 0)
			break;
		len += n;
	}
	fclose(f);
	current = path;
	if (verbose)
		fprintf(stderr, "replay: %s (%zu bytes)\n", path, len);
	/* an exact-size copy, so that a sanitizer sees reads past the end */
	{
		uint8_t    *exact = malloc(len ? len : 1);

		if (exact == NULL)
			exit(2);
		if (len)
			memcpy(exact, buf, len);
		free(buf);
		LLVMFuzzerTestOneInput(exact, len);
		free(exact);
	}
	nfiles++;
	return 0;
}

static int
cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

static int
run_path(const char *path)
{
	struct stat st;
	DIR		   *d;
	struct dirent *e;
	char	  **names = NULL;
	size_t		n = 0,
				cap = 0,
				i;
	int			rc = 0;

	if (stat(path, &st) < 0)
	{
		perror(path);
		return -1;
	}
	if (!S_ISDIR(st.st_mode))
		return run_file(path);
	if ((d = opendir(path)) == NULL)
	{
		perror(path);
		return -1;
	}
	while ((e = readdir(d)) != NULL)
	{
		size_t		len;

		if (e->d_name[0] == '.')
			continue;
		if (n == cap)
		{
			cap = cap ? cap * 2 : 64;
			names = realloc(names, cap * sizeof(char *));
			if (names == NULL)
				exit(2);
		}
		len = strlen(path) + strlen(e->d_name) + 2;
		names[n] = malloc(len);
		if (names[n] == NULL)
			exit(2);
		snprintf(names[n], len, "%s/%s", path, e->d_name);
		n++;
	}
	closedir(d);
	if (n > 1)
		qsort(names, n, sizeof(char *), cmp_names);
	for (i = 0; i < n; i++)
	{
		if (run_path(names[i]) < 0)
			rc = -1;
		free(names[i]);
	}
	free(names);
	return rc;
}

int
main(int argc, char **argv)
{
	int			i,
				rc = 0;

	signal(SIGABRT, on_abort);
	for (i = 1; i < argc; i++)
	{
		if (strcmp(argv[i], "-v") == 0)
		{
			verbose = 1;
			continue;
		}
		if (run_path(argv[i]) < 0)
			rc = 1;
	}
	printf("%s: %ld inputs replayed, no crash\n", argv[0], nfiles);
	return rc;
}
