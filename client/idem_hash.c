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
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "idem_int.h"

static int
hash_parts(char out[IDEM_HASH_SIZE], size_t nparts,
		   const void *const *parts, const size_t *lens)
{
	static const char hex[] = "0123456789abcdef";
	EVP_MD_CTX *ctx;
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int dlen = 0;
	int			ok;
	size_t		i;

	ctx = EVP_MD_CTX_new();
	if (ctx == NULL)
		return -1;
	ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	for (i = 0; ok && i < nparts; i++)
	{
		unsigned char len_be[8];
		uint64_t	len = (uint64_t) lens[i];
		int			b;

		for (b = 7; b >= 0; b--)
		{
			len_be[b] = (unsigned char) (len & 0xff);
			len >>= 8;
		}
		ok = EVP_DigestUpdate(ctx, len_be, sizeof(len_be));
		if (ok && lens[i] > 0)
			ok = EVP_DigestUpdate(ctx, parts[i], lens[i]);
	}
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
	const void *small_parts[8];
	size_t		small_lens[8];
	const void **p = (const void **) small_parts;
	size_t	   *lens = small_lens;
	size_t		i;
	int			rc = -1;

	if (nparts > 0 && parts == NULL)
		return -1;
	for (i = 0; i < nparts; i++)
		if (parts[i] == NULL)
			return -1;
	if (nparts > 8)
	{
		p = malloc(nparts * sizeof(*p));
		lens = malloc(nparts * sizeof(*lens));
		if (p == NULL || lens == NULL)
			goto done;
	}
	for (i = 0; i < nparts; i++)
	{
		p[i] = parts[i];
		lens[i] = strlen(parts[i]);
	}
	rc = hash_parts(out, nparts, p, lens);
done:
	if (nparts > 8)
	{
		free(p);
		free(lens);
	}
	return rc;
}

int
idem_request_hash(char out[IDEM_HASH_SIZE], const char *method,
				  const char *path, const void *body, size_t body_len)
{
	const void *parts[3];
	size_t		lens[3];

	if (method == NULL || path == NULL)
		return -1;
	parts[0] = method;
	lens[0] = strlen(method);
	parts[1] = path;
	lens[1] = strlen(path);
	parts[2] = body ? body : "";
	lens[2] = body ? body_len : 0;
	return hash_parts(out, 3, parts, lens);
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
