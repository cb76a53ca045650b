#!/usr/bin/env bash
#
# shape.sh: rules the server module's code keeps (issue 13), checked on
# the source tree; needs no server.
#
#   - no function of src/*.c is over 120 lines, from the line that names
#     it to its closing brace (PostgreSQL's layout: the name and the braces
#     in column 0)
#   - no C file of the tree includes a .c file
#   - the locks (idem_lock.c) neither read nor write records nor ask
#     whether an owner is there: storage and owner call them, never the
#     other way round
#   - the detail "Key "k" in scope "s"" is written through KEY_DETAIL only

set -uo pipefail

# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

cd "$IDEM_ROOT" || exit 1

long=$(awk '
	/^[A-Za-z_].*\(/ && !/;[ \t]*$/ { head = $0; line = FNR }
	/^\{/ { start = line ? line : FNR; name = head; inb = 1; next }
	/^\}/ && inb {
		if (FNR - start + 1 > 120) {
			split(name, w, "(")
			printf "%s:%d %s: %d lines\n", FILENAME, start, w[1], FNR - start + 1
		}
		inb = 0; line = 0
	}' src/*.c)
check_eq "no function of the server module is over 120 lines" "" "$long"

largest=$(awk '
	/^[A-Za-z_].*\(/ && !/;[ \t]*$/ { head = $0; line = FNR }
	/^\{/ { start = line ? line : FNR; name = head; inb = 1; next }
	/^\}/ && inb { split(name, w, "("); print FNR - start + 1, FILENAME ":" start, w[1]; inb = 0; line = 0 }' src/*.c |
	sort -rn | head -n 3 | tr '\n' ';')
echo "# the longest: $largest"

included=$(git ls-files '*.c' '*.h' 2>/dev/null | xargs -r grep -ln '^[[:space:]]*#[[:space:]]*include[[:space:]]*"[^"]*\.c"' 2>/dev/null)
check_eq "no C file includes a .c file" "" "$included"

calls=$(grep -n 'idem_storage_\|idem_owner_\|idem_lease_alive\|idem_abandon_all' src/idem_lock.c)
check_eq "idem_lock.c calls neither storage nor owner" "" "$calls"

details=$(grep -n 'Key \\"%s\\" in scope' src/*.c)
check_eq "every \"Key ... in scope ...\" detail goes through KEY_DETAIL" "" "$details"

finish
