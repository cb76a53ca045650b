# libs.mk: compiler and linker flags for libpq and OpenSSL's libcrypto, from
# pkg-config or, without it, pg_config.  Included by every Makefile that
# builds C against them: client/ (and its fuzzers), bench/, examples/ and
# the test programs.
PG_CONFIG ?= pg_config
PQ_CFLAGS := $(shell pkg-config --cflags libpq 2>/dev/null || echo -I$$($(PG_CONFIG) --includedir))
PQ_LIBS   := $(shell pkg-config --libs libpq 2>/dev/null || echo -L$$($(PG_CONFIG) --libdir) -lpq)
CRYPTO_LIBS := $(shell pkg-config --libs libcrypto 2>/dev/null || echo -lcrypto)
