# shellcheck shell=bash
# lib.sh: helpers shared by tools/cluster.sh and tools/pgbouncer.sh,
# sourced by both.  absdir calls the sourcing script's usage().

# run_as USER CMD...: run CMD as USER (directly when that is us), from a
# directory the user can enter so that initdb and postgres do not complain
# about the caller's working directory.
run_as()
{
	local user=$1
	shift
	if [[ $user == "$(id -un)" ]]; then
		(cd / && "$@")
	elif command -v runuser >/dev/null 2>&1; then
		(cd / && runuser -u "$user" -- "$@")
	else
		local cmd
		printf -v cmd '%q ' "$@"
		(cd / && su -s /bin/sh "$user" -c "$cmd")
	fi
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_in_use()
{
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The absolute path of directory argument $1 (usage when it is missing).
absdir()
{
	[[ -n ${1:-} ]] || usage
	case $1 in
		/*) printf '%s\n' "$1" ;;
		*) printf '%s\n' "$PWD/$1" ;;
	esac
}
