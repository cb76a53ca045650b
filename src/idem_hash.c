/*-------------------------------------------------------------------------
 *
 * idem_hash.c
 *	  Length-framed SHA-256, shared by idem_derive_key and
 *	  idem_request_hash, and the 64-bit hash that names a key's lock.
 *
 * The framing is part of the contract, so that any client can compute the
 * same values: for each part in order, its length in bytes as an 8-byte
 * big-endian unsigned integer, then its bytes; the result is the lowercase
 * hex of the SHA-256 of that.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/cryptohash.h"
#include "common/hashfn.h"
#include "common/sha2.h"

#include "idempotency.h"

static void
sha256_update(pg_cryptohash_ctx *ctx, const uint8 *data, size_t len)
{
	if (pg_cryptohash_update(ctx, data, len) < 0)
		elog(ERROR, "could not update SHA-256 context: %s",
			 pg_cryptohash_error(ctx));
}

/*
 * Returns the palloc'd lowercase hex SHA-256 of the framed parts.
 */
char *
idem_sha256_framed(int nparts, const char *const *parts, const size_t *lens)
{
	pg_cryptohash_ctx *ctx;
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	char	   *hex;
	static const char hexdigits[] = "0123456789abcdef";

	ctx = pg_cryptohash_create(PG_SHA256);
	if (pg_cryptohash_init(ctx) < 0)
		elog(ERROR, "could not initialize SHA-256 context: %s",
			 pg_cryptohash_error(ctx));

	for (int i = 0; i < nparts; i++)
	{
		uint8		frame[8];
		uint64		len = (uint64) lens[i];

		for (int b = 7; b >= 0; b--)
		{
			frame[b] = (uint8) (len & 0xff);
			len >>= 8;
		}
		sha256_update(ctx, frame, sizeof(frame));
		if (lens[i] > 0)
			sha256_update(ctx, (const uint8 *) parts[i], lens[i]);
	}

	if (pg_cryptohash_final(ctx, digest, sizeof(digest)) < 0)
		elog(ERROR, "could not finalize SHA-256 context: %s",
			 pg_cryptohash_error(ctx));
	pg_cryptohash_free(ctx);

	hex = palloc(PG_SHA256_DIGEST_LENGTH * 2 + 1);
	for (int i = 0; i < PG_SHA256_DIGEST_LENGTH; i++)
	{
		hex[i * 2] = hexdigits[digest[i] >> 4];
		hex[i * 2 + 1] = hexdigits[digest[i] & 0x0f];
	}
	hex[PG_SHA256_DIGEST_LENGTH * 2] = '\0';
	return hex;
}

/*
 * 64 bits that name the advisory lock of a (scope, key).  Two keys that
 * share a lock only make one wait for the other needlessly; the record, not
 * the lock, says who owns a key.
 */
uint64
idem_key_hash64(const IdemKey *k)
{
	uint64		h;

	h = hash_bytes_extended((const unsigned char *) k->scope, k->scope_len,
							0x6964656d);	/* "idem" */
	return hash_bytes_extended((const unsigned char *) k->key, k->key_len, h);
}
