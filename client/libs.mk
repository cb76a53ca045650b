# libs.mk: compiler and linker flags for libpq, OpenSSL's libcrypto and
# json-c, from pkg-config or, without it, pg_config and plain -l flags.
# Included by every Makefile that builds C against them: client/ (and its
# fuzzers), bench/, examples/ and the test programs.  A program linking
# libidem.a needs all three (libidem reads the stored headers with json-c).
PG_CONFIG ?= pg_config
PQ_CFLAGS := $(shell pkg-config --cflags libpq 2>/dev/null || echo -I$$($(PG_CONFIG) --includedir))
PQ_LIBS   := $(shell pkg-config --libs libpq 2>/dev/null || echo -L$$($(PG_CONFIG) --libdir) -lpq)
CRYPTO_LIBS := $(shell pkg-config --libs libcrypto 2>/dev/null || echo -lcrypto)
JSONC_CFLAGS := $(shell pkg-config --cflags json-c 2>/dev/null)
JSONC_LIBS   := $(shell pkg-config --libs json-c 2>/dev/null || echo -ljson-c)
