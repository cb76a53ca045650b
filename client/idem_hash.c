/*-------------------------------------------------------------------------
 *
 * idem_hash.c
 *	  Key derivation and request hashing, computed locally and bit-identical
 *	  to the SQL functions idem_derive_key and idem_request_hash.
 *
 * The framing, so that any language can reproduce it: SHA-256 over, for
 * each part in order, the part's length in bytes as an 8-byte big-endian
 * unsigned integer followed by the part's bytes; the digest in lowercase
 * hex.  SHA-256 comes from OpenSSL's libcrypto (EVP).
 *
 *-------------------------------------------------------------------------
 */
#include <string.h>

#include <openssl/evp.h>

#include "idem_int.h"

/* SHA-256 over framed parts: begin, one add per part, finish */
static EVP_MD_CTX *
frame_begin(void)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();

	if (ctx && !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL))
	{
		EVP_MD_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

static int
frame_add(EVP_MD_CTX *ctx, const void *part, size_t len)
{
	unsigned char len_be[8];
	uint64_t	v = (uint64_t) len;
	int			b;

	for (b = 7; b >= 0; b--)
	{
		len_be[b] = (unsigned char) (v & 0xff);
		v >>= 8;
	}
	if (!EVP_DigestUpdate(ctx, len_be, sizeof(len_be)))
		return 0;
	return len == 0 || EVP_DigestUpdate(ctx, part, len);
}

/* writes the lowercase hex digest and frees ctx; 0 or -1 */
static int
frame_finish(EVP_MD_CTX *ctx, int ok, char out[IDEM_HASH_SIZE])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int dlen = 0;
	int			i;

	if (ok)
		ok = EVP_DigestFinal_ex(ctx, digest, &dlen);
	EVP_MD_CTX_free(ctx);
	if (!ok || dlen != 32)
		return -1;
	for (i = 0; i < 32; i++)
	{
		out[2 * i] = hex[digest[i] >> 4];
		out[2 * i + 1] = hex[digest[i] & 0x0f];
	}
	out[64] = '\0';
	return 0;
}

int
idem_derive_key(char out[IDEM_HASH_SIZE], size_t nparts,
				const char *const *parts)
{
	EVP_MD_CTX *ctx;
	int			ok = 1;
	size_t		i;

	if (nparts > 0 && parts == NULL)
		return -1;
	for (i = 0; i < nparts; i++)
		if (parts[i] == NULL)
			return -1;
	if ((ctx = frame_begin()) == NULL)
		return -1;
	for (i = 0; ok && i < nparts; i++)
		ok = frame_add(ctx, parts[i], strlen(parts[i]));
	return frame_finish(ctx, ok, out);
}

int
idem_request_hash(char out[IDEM_HASH_SIZE], const char *method,
				  const char *path, const void *body, size_t body_len)
{
	EVP_MD_CTX *ctx;
	int			ok;

	if (method == NULL || path == NULL)
		return -1;
	if ((ctx = frame_begin()) == NULL)
		return -1;
	ok = frame_add(ctx, method, strlen(method)) &&
		frame_add(ctx, path, strlen(path)) &&
		frame_add(ctx, body, body ? body_len : 0);
	return frame_finish(ctx, ok, out);
}

int
idem_step_key(idem_conn *conn, const char *step, char out[IDEM_HASH_SIZE])
{
	const char *parts[2];

	idem__clear_error(conn);
	if (conn->run_id == NULL)
	{
		idem__set_error(conn, IDEM_ERR_NO_RUN,
						"no run id on this handle: call idem_set_run_id() "
						"before idem_step() or idem_step_key()");
		return -1;
	}
	if (step == NULL)
	{
		idem__set_error(conn, IDEM_ERR_BAD_INPUT,
						"step name must not be NULL");
		return -1;
	}
	parts[0] = conn->run_id;
	parts[1] = step;
	if (idem_derive_key(out, 2, parts) < 0)
	{
		idem__set_error(conn, IDEM_ERR_NOMEM, "could not compute SHA-256");
		return -1;
	}
	return 0;
}
