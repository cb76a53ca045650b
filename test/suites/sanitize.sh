#!/usr/bin/env bash
#
# sanitize.sh: the regress, isolation and bad-input suites against the
# extension built with ASan and UBSan, in a server of its own (see
# test/sanitize.sh, which `make sanitize` runs alone).  About a minute; it
# builds in a copy of the tree and installs into a private copy of the
# PostgreSQL installation, so neither the installed module nor the tree's
# build changes.  Skipped where sanitizers cannot run; SANITIZE=0 skips it.

set -uo pipefail

# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

if [[ ${SANITIZE:-1} == 0 ]]; then
	skip_all "SANITIZE=0"
fi

rm -rf "$IDEM_TMP"
mkdir -p "$IDEM_TMP"
chmod 0755 "$IDEM_TMP"
SANITIZE_DIR=$IDEM_TMP/run SANITIZE_SKIP_UNSUPPORTED=1 \
	exec bash "$IDEM_ROOT/test/sanitize.sh"
