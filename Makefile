# Makefile for the idempotency extension (PGXS) and its client library.
#
# The server module is built by PGXS; the client library, the idem tool and
# the test harness have their own targets after the PGXS include.

EXTENSION  = idempotency
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" idempotency.control)

MODULE_big = idempotency
OBJS = \
	src/idempotency.o \
	src/idem_args.o \
	src/idem_funcs.o \
	src/idem_hash.o \
	src/idem_hint.o \
	src/idem_lock.o \
	src/idem_ops.o \
	src/idem_owner.o \
	src/idem_purge.o \
	src/idem_route.o \
	src/idem_stats.o \
	src/idem_storage.o \
	src/idem_tenant.o \
	src/idem_wake.o \
	src/idem_worker.o
PGFILEDESC = "idempotency - idempotency keys stored beside the data"

DATA = $(wildcard sql/idempotency--*.sql)

# pg_regress: scripts in sql/ (beside the install scripts), expected output
# in expected/; results go to test/out
REGRESS = init reserve commit release get_purge hashing errors transactions leases planning \
	settings privileges tenants logged ops dba hints upgrade
REGRESS_OPTS = --outputdir=test/out

# pg_isolation_regress: specs and expected output in test/isolation
ISOLATION = $(basename $(notdir $(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test/isolation --outputdir=test/isolation/out

EXTRA_CLEAN = test/out test/isolation/out

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)

ifneq ($(wildcard $(PGXS)),)
include $(PGXS)

# every file of the module includes the shared header
$(OBJS): src/idempotency.h

else
# Server headers are missing: only the bootstrap targets below work; they
# install what is needed and start over.
all install installcheck:
	@echo "PostgreSQL server headers (PGXS) not found; run 'make test' or 'make demo', which install them" >&2
	@exit 1
endif

# The client library and the idem tool (client/): built and installed with
# the extension (PREFIX and DESTDIR are passed on) unless NO_CLIENT=1, which
# the Debian packaging sets to build the two separately.
.PHONY: client client-install client-clean check-client
ifndef NO_CLIENT
all: client
install: client-install
clean: client-clean
endif
client:
	$(MAKE) -C client
client-install: client
	$(MAKE) -C client install
client-clean:
	$(MAKE) -C client clean
# the client's C tests, against the cluster in libpq's environment
check-client: client
	$(MAKE) -C client check

.PHONY: deps test demo

deps:
	@bash tools/deps.sh

# The test command of the README: installs what is missing, builds with
# warnings as errors, installs, starts a throwaway cluster, runs every suite.
test: deps
	@bash test/run-all.sh

demo: deps
	@bash tools/demo.sh

# The benchmark (bench/): its own throwaway cluster, a few minutes; results
# in bench/results/.  Never part of make test.
.PHONY: bench
bench: deps
	$(MAKE) -C bench

# Programs built on libidem's public header: the demo and the HTTP service
.PHONY: examples examples-clean
examples: client
	$(MAKE) -C examples/demo
	$(MAKE) -C examples/http
examples-clean:
	$(MAKE) -C examples/demo clean
	$(MAKE) -C examples/http clean
ifndef NO_CLIENT
clean: examples-clean
endif

# Debian packages (postgresql-15-idempotency, libidem1, libidem-dev,
# idem-tools) in build/deb/: installs the build dependencies, then runs
# dpkg-buildpackage -us -uc -b in a copy of the tree (debian/build-deb.sh)
.PHONY: deb check-package
deb:
	@bash debian/build-deb.sh

# installs those packages on this machine and tests them (test/package.sh),
# then purges them and runs make install again
check-package:
	@bash test/package.sh

# The module built with AddressSanitizer and UndefinedBehaviorSanitizer and
# tested in a server of its own (test/sanitize.sh): installed into a private
# copy of the PostgreSQL installation, the sanitizer runtimes preloaded into
# the postmaster; the regress, isolation and bad-input suites run there,
# then the reports are read.  The installed module and this tree's build
# are left alone.  About a minute; make test runs it too
# (test/suites/sanitize.sh, skipped where sanitizers cannot run).
.PHONY: sanitize
sanitize: deps
	@bash test/sanitize.sh
