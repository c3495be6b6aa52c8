# shellcheck shell=bash
# forward_signals CMD [ARGS...]: run CMD in its own process group and pass
# SIGINT and SIGTERM on to that whole group, so that the test worlds held by
# the processes under it (cargo, the test binaries, netd) tear down as on a
# normal exit before the prompt returns. Returns CMD's exit status (130 or
# 143 when interrupted). Without this, a SIGTERM to the script would wait for
# the foreground command to finish on its own, and Ctrl-C would rely on every
# process of the terminal's group handling it.
forward_signals() {
	local pid rc
	set -m # the background job gets its own process group: its PID
	"$@" &
	pid=$!
	set +m
	# shellcheck disable=SC2064 # ($pid is fixed now)
	trap "kill -INT -- -$pid 2>/dev/null" INT
	# shellcheck disable=SC2064
	trap "kill -TERM -- -$pid 2>/dev/null" TERM
	while :; do
		rc=0
		wait "$pid" || rc=$?
		# wait returns early (status > 128) when a trapped signal arrives.
		kill -0 "$pid" 2>/dev/null || break
	done
	trap - INT TERM
	return "$rc"
}
