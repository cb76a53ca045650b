/*-------------------------------------------------------------------------
 *
 * sha256_ref.h
 *	  A plain SHA-256 (FIPS 180-4), written for the fuzz harnesses as an
 *	  independent reference: the library uses OpenSSL, this does not.
 *	  Simple on purpose.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_SHA256_REF_H
#define IDEM_SHA256_REF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct ref_sha256
{
	uint32_t	h[8];
	uint64_t	total;			/* bytes */
	uint8_t		buf[64];
	size_t		nbuf;
} ref_sha256;

static const uint32_t ref_sha256_k[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
	0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
	0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
	0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
	0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
	0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
	0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
	0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
	0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
};

#define REF_ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static inline void
ref_sha256_block(ref_sha256 *c, const uint8_t *b)
{
	uint32_t	w[64],
				a,
				bb,
				cc,
				d,
				e,
				f,
				g,
				h;
	int			i;

	for (i = 0; i < 16; i++)
		w[i] = (uint32_t) b[4 * i] << 24 | (uint32_t) b[4 * i + 1] << 16 |
			(uint32_t) b[4 * i + 2] << 8 | (uint32_t) b[4 * i + 3];
	for (i = 16; i < 64; i++)
	{
		uint32_t	s0 = REF_ROR(w[i - 15], 7) ^ REF_ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t	s1 = REF_ROR(w[i - 2], 17) ^ REF_ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);

		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = c->h[0];
	bb = c->h[1];
	cc = c->h[2];
	d = c->h[3];
	e = c->h[4];
	f = c->h[5];
	g = c->h[6];
	h = c->h[7];
	for (i = 0; i < 64; i++)
	{
		uint32_t	S1 = REF_ROR(e, 6) ^ REF_ROR(e, 11) ^ REF_ROR(e, 25);
		uint32_t	ch = (e & f) ^ (~e & g);
		uint32_t	t1 = h + S1 + ch + ref_sha256_k[i] + w[i];
		uint32_t	S0 = REF_ROR(a, 2) ^ REF_ROR(a, 13) ^ REF_ROR(a, 22);
		uint32_t	maj = (a & bb) ^ (a & cc) ^ (bb & cc);
		uint32_t	t2 = S0 + maj;

		h = g;
		g = f;
		f = e;
		e = d + t1;
		d = cc;
		cc = bb;
		bb = a;
		a = t1 + t2;
	}
	c->h[0] += a;
	c->h[1] += bb;
	c->h[2] += cc;
	c->h[3] += d;
	c->h[4] += e;
	c->h[5] += f;
	c->h[6] += g;
	c->h[7] += h;
}

static inline void
ref_sha256_init(ref_sha256 *c)
{
	static const uint32_t iv[8] = {
		0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
		0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
	};

	memcpy(c->h, iv, sizeof(iv));
	c->total = 0;
	c->nbuf = 0;
}

static inline void
ref_sha256_update(ref_sha256 *c, const void *data, size_t len)
{
	const uint8_t *p = data;

	c->total += len;
	while (len > 0)
	{
		if (c->nbuf == 0 && len >= 64)
		{
			ref_sha256_block(c, p);
			p += 64;
			len -= 64;
			continue;
		}
		c->buf[c->nbuf++] = *p++;
		len--;
		if (c->nbuf == 64)
		{
			ref_sha256_block(c, c->buf);
			c->nbuf = 0;
		}
	}
}

/* the lowercase hex digest, NUL-terminated (65 bytes) */
static inline void
ref_sha256_hex(ref_sha256 *c, char out[65])
{
	static const char hex[] = "0123456789abcdef";
	uint64_t	bits = c->total * 8;
	uint8_t		pad = 0x80,
				zero = 0,
				len_be[8];
	int			i;

	ref_sha256_update(c, &pad, 1);
	while (c->nbuf != 56)
		ref_sha256_update(c, &zero, 1);
	for (i = 0; i < 8; i++)
		len_be[i] = (uint8_t) (bits >> (56 - 8 * i));
	ref_sha256_update(c, len_be, 8);
	for (i = 0; i < 32; i++)
	{
		uint8_t		v = (uint8_t) (c->h[i / 4] >> (24 - 8 * (i % 4)));

		out[2 * i] = hex[v >> 4];
		out[2 * i + 1] = hex[v & 15];
	}
	out[64] = '\0';
}

/* one framed part: its length as 8 big-endian bytes, then its bytes */
static inline void
ref_sha256_part(ref_sha256 *c, const void *part, size_t len)
{
	uint8_t		be[8];
	int			i;

	for (i = 0; i < 8; i++)
		be[i] = (uint8_t) ((uint64_t) len >> (56 - 8 * i));
	ref_sha256_update(c, be, 8);
	ref_sha256_update(c, part, len);
}

#endif							/* IDEM_SHA256_REF_H */
