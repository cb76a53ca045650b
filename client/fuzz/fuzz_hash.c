/*-------------------------------------------------------------------------
 *
 * fuzz_hash.c
 *	  libFuzzer harness: request hashing and key derivation, differential.
 *
 * idem_derive_key, idem_request_hash and idem_step_key against the
 * framing of the README (idem_request_hash, idem_derive_key) computed here with an independent SHA-256
 * (sha256_ref.h): for each part, its byte length as an 8-byte big-endian
 * integer, then its bytes; lowercase hex.  Also: a NULL part, method or
 * path is refused (-1) and leaves no partial output behind as a
 * success; a NULL body is the empty body; (method, path, body) hashed as
 * a request equals the same three parts derived as a key when the body
 * holds no NUL byte (the framing is one and the same).
 *
 * Input: a flags byte (which part to make NULL in the refusal checks, a
 * bogus body length with a NULL body), then parts separated by '|'; the
 * third part is the request body and ends at "||" instead, so that it may
 * hold any byte (NULs too).  As key parts, every part counts up to its
 * first NUL (a C string); parts after the third are extra key parts.
 *
 *-------------------------------------------------------------------------
 */
#include "idem_int.h"
#include "fuzz.h"
#include "sha256_ref.h"

#define MAX_PARTS 40

static void
ref_frame(char out[65], size_t n, const char *const *parts, const size_t *lens)
{
	ref_sha256	c;
	size_t		i;

	ref_sha256_init(&c);
	for (i = 0; i < n; i++)
		ref_sha256_part(&c, parts[i], lens[i]);
	ref_sha256_hex(&c, out);
}

static int
is_lower_hex64(const char *s)
{
	int			i;

	for (i = 0; i < 64; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return s[64] == '\0';
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *parts[MAX_PARTS];
	size_t		lens[MAX_PARTS];
	char	   *copies[MAX_PARTS];
	size_t		n = 0,
				pos,
				i;
	uint8_t		flags;
	char		got[IDEM_HASH_SIZE],
				want[IDEM_HASH_SIZE];

	if (size == 0)
		return 0;
	flags = data[0];
	data++;
	size--;

	/* parts separated by '|'; the third (the body) ends at "||" instead */
	pos = 0;
	while (n < MAX_PARTS)
	{
		size_t		end = pos;
		int			last;

		if (n == 2)
			while (end < size && !(data[end] == '|' && end + 1 < size &&
								   data[end + 1] == '|'))
				end++;
		else
			while (end < size && data[end] != '|')
				end++;
		copies[n] = fuzz_strndup(data + pos, end - pos);
		parts[n] = copies[n];
		lens[n] = end - pos;
		n++;
		last = end >= size;
		pos = end + (n == 3 ? 2 : 1);
		if (last)
			break;
	}

	/* ---- idem_derive_key: each part as a C string ---- */
	{
		size_t		clens[MAX_PARTS];

		for (i = 0; i < n; i++)
			clens[i] = strlen(parts[i]);
		memset(got, 'x', sizeof(got));
		FUZZ_CHECK(idem_derive_key(got, n, parts) == 0, "derive_key failed");
		ref_frame(want, n, parts, clens);
		FUZZ_CHECK(strcmp(got, want) == 0, "derive_key of %zu parts: %s, want %s",
				   n, got, want);
		FUZZ_CHECK(is_lower_hex64(got), "derive_key: not lowercase hex");

		/* no parts at all: SHA-256 of nothing */
		FUZZ_CHECK(idem_derive_key(got, 0, NULL) == 0 &&
				   strcmp(got, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0,
				   "derive_key of no parts");

		/* a NULL part anywhere is refused */
		if (n > 0)
		{
			const char *saved = parts[flags % n];

			parts[flags % n] = NULL;
			FUZZ_CHECK(idem_derive_key(got, n, parts) == -1,
					   "derive_key accepted a NULL part");
			parts[flags % n] = saved;
		}
		FUZZ_CHECK(idem_derive_key(got, 1, NULL) == -1,
				   "derive_key accepted parts == NULL");
	}

	/* ---- idem_request_hash: method, path (C strings), body (bytes) ---- */
	{
		const char *method = n > 0 ? parts[0] : "";
		const char *path = n > 1 ? parts[1] : "";
		const char *body = n > 2 ? parts[2] : NULL;
		size_t		body_len = n > 2 ? lens[2] : 0;
		const char *rp[3];
		size_t		rl[3];

		rp[0] = method;
		rl[0] = strlen(method);
		rp[1] = path;
		rl[1] = strlen(path);
		rp[2] = body ? body : "";
		rl[2] = body_len;
		ref_frame(want, 3, rp, rl);
		FUZZ_CHECK(idem_request_hash(got, method, path, body, body_len) == 0,
				   "request_hash failed");
		FUZZ_CHECK(strcmp(got, want) == 0, "request_hash: %s, want %s", got, want);

		/* NULL body = empty body, whatever the length says */
		rl[2] = 0;
		ref_frame(want, 3, rp, rl);
		FUZZ_CHECK(idem_request_hash(got, method, path, NULL, flags) == 0 &&
				   strcmp(got, want) == 0, "request_hash with a NULL body");
		FUZZ_CHECK(idem_request_hash(got, method, path, body ? body : "", 0) == 0 &&
				   strcmp(got, want) == 0, "request_hash with an empty body");

		/* same framing as derive_key when the body is a C string */
		if (body == NULL || memchr(body, '\0', body_len) == NULL)
		{
			char		k[IDEM_HASH_SIZE];
			const char *three[3] = {method, path, body ? body : ""};

			FUZZ_CHECK(idem_request_hash(got, method, path, body, body_len) == 0 &&
					   idem_derive_key(k, 3, three) == 0 && strcmp(got, k) == 0,
					   "request_hash and derive_key of the same parts differ");
		}

		FUZZ_CHECK(idem_request_hash(got, NULL, path, body, body_len) == -1,
				   "request_hash accepted a NULL method");
		FUZZ_CHECK(idem_request_hash(got, method, NULL, body, body_len) == -1,
				   "request_hash accepted a NULL path");
	}

	/* ---- idem_step_key = derive_key(run id, step) ---- */
	if (n >= 2)
	{
		static int	dummy;
		idem_conn  *conn = idem_wrap((struct pg_conn *) &dummy);
		const char *two[2] = {parts[0], parts[1]};
		char		k[IDEM_HASH_SIZE];

		FUZZ_CHECK(conn != NULL, "idem_wrap");
		FUZZ_CHECK(idem_step_key(conn, parts[1], k) == -1 &&
				   idem_errcode(conn) == IDEM_ERR_NO_RUN, "step_key without a run id");
		FUZZ_CHECK(idem_set_run_id(conn, parts[0]) == 0, "set_run_id");
		FUZZ_CHECK(strcmp(idem_run_id(conn), parts[0]) == 0, "run_id copy");
		FUZZ_CHECK(idem_step_key(conn, parts[1], k) == 0, "step_key failed");
		FUZZ_CHECK(idem_derive_key(got, 2, two) == 0 && strcmp(got, k) == 0,
				   "step_key differs from derive_key(run id, step)");
		FUZZ_CHECK(idem_step_key(conn, NULL, k) == -1 &&
				   idem_errcode(conn) == IDEM_ERR_BAD_INPUT, "step_key(NULL)");
		idem_free(conn);
	}

	for (i = 0; i < n; i++)
		free(copies[i]);
	return 0;
}
