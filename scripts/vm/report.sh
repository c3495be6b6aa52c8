# shellcheck shell=bash
# scripts/vm/report.sh: the summary after the VM stopped: each payload's
# verdict, a timeout or early stop, the times, and the last line
#   vm-test: N passed, M failed
# Sourced; defines functions only. Sets status (the script's exit code).
report() {
	local i rc passed failed msg
	passed=0 failed=0
	for ((i = 1; i <= ${#names[@]}; i++)); do
		rc=${rcs[$i]:-}
		if [[ $rc == 0 ]]; then
			passed=$((passed + 1))
		else
			failed=$((failed + 1))
			[[ -n $rc ]] || log "no exit marker for payload $i (${names[$((i - 1))]})"
		fi
	done
	status=0
	((failed == 0)) || status=1
	if ((qrc == 124 || qrc == 137)); then
		log "VM timed out after ${timeout_s}s${current:+ (while running payload $current)}"
		status=1
	elif ((!saw_done)); then
		log "the VM stopped before /init finished (QEMU exit code $qrc)"
		status=1
	fi
	if [[ -n $t_init ]]; then
		msg="boot to /init $(secs $((t_init - t_qemu)))s (guest ${guest_init}s)"
		# Guest clock: module loading and mounts, then the payloads.
		[[ -n $guest_ready ]] && msg+=", setup in VM $(awk "BEGIN { printf \"%.1f\", $guest_ready - $guest_init }")s"
		[[ -n $guest_done ]] && msg+=", payloads $(awk "BEGIN { printf \"%.1f\", $guest_done - $guest_ready }")s"
		msg+=", VM total $(secs $((t_end - t_qemu)))s, script total $(secs $((t_end - t_start)))s"
		say "$msg"
	fi
	echo "vm-test: $passed passed, $failed failed"
}
