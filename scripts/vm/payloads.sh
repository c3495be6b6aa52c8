# shellcheck shell=bash
# scripts/vm/payloads.sh: what the VM runs. Each payload is a small sh script
# in the per-run initramfs (/etc/vm-test/payload/NNN.sh) that guest/init runs
# in order. Payloads come from the self-check (guest/selfcheck), the command
# line, or the workspace's test binaries that have ignored tests matching
# WEFT_VM_FILTER (cargo mode).
# Sourced; defines functions only. Needs initramfs.sh (put, put_libs).

# Sets work, stage, lower, marker; writes the guest's environment file.
start_run_stage() {
	local var
	work=$(mktemp -d "${TMPDIR:-/tmp}/weft-vm.XXXXXX")
	stage=$work/root
	lower=$base/root
	mkdir -p "$stage/etc/vm-test/payload"
	marker="@@vm-test-$RANDOM$RANDOM@@"
	names=()
	shared_binaries=0
	{
		echo "export WEFT_IN_VM=1 HOME=/root RUST_BACKTRACE=\${RUST_BACKTRACE:-1}"
		while IFS= read -r var; do
			[[ $var == WEFT_VM_* ]] && continue
			printf 'export %s=%s\n' "$var" "$(shq "${!var}")"
		done < <(compgen -e | grep -E '^(RUST_|WEFT_)' || true)
	} >"$stage/etc/vm-test/env"
}

# add_payload CWD [NAME=VALUE...] -- PROGRAM [ARGS...]
add_payload() {
	local cwd=$1 n bin real e a envs=()
	shift
	while [[ $1 != -- ]]; do
		envs+=("$1")
		shift
	done
	shift
	bin=$1
	shift
	n=$(printf '%03d' $((${#names[@]} + 1)))
	if [[ $bin == /opt/vm-test/selfcheck ]]; then
		real=$bin
	else
		if [[ $bin != */* ]]; then
			real=$bin
			bin=$(command -v "$bin") || die "payload $real not found"
		fi
		[[ -f $bin ]] || die "payload $bin not found"
		real=$(realpath "$bin")
		put_libs "$real"
		if [[ $real == "$project_dir"/* ]]; then
			shared_binaries=1
		else
			real=/opt/vm-test/$n/${real##*/}
			put "$bin" "$real"
			chmod +x "$stage$real"
		fi
	fi
	# The working directory is kept if it lies in the (then shared) project.
	if [[ -n $cwd && ($cwd == "$project_dir" || $cwd == "$project_dir"/*) ]]; then
		shared_binaries=1
	else
		cwd=/
	fi
	{
		printf 'cd %s || exit 125\n' "$(shq "$cwd")"
		for e in "${envs[@]}"; do printf 'export %s=%s\n' "${e%%=*}" "$(shq "${e#*=}")"; done
		printf 'exec %s' "$(shq "$real")"
		for a in "$@"; do printf ' %s' "$(shq "$a")"; done
		printf '\n'
	} >"$stage/etc/vm-test/payload/$n.sh"
	names+=("${real##*/}${*:+ $*}")
}


add_selfcheck_payloads() {
	local c
	mkdir -p "$stage/opt/vm-test"
	cp "$vm_dir/guest/selfcheck" "$stage/opt/vm-test/selfcheck"
	chmod +x "$stage/opt/vm-test/selfcheck"
	for c in modules dummy vlan ipvlan macvlan bridge vxlan wireguard nftables autoload netns-sysfs; do
		add_payload / -- /opt/vm-test/selfcheck "$c"
	done
}

add_explicit_payloads() { # $@: BIN [ARGS...] [--- BIN2 [ARGS...]]...
	local a cur=()
	for a in "$@" ---; do
		if [[ $a == --- ]]; then
			((${#cur[@]})) || die "empty payload between --- separators"
			add_payload "$PWD" -- "${cur[@]}"
			cur=()
		else
			cur+=("$a")
		fi
	done
}

# The workspace's test binaries with ignored tests matching the filter. One
# build, `cargo build --workspace --all-targets`, the same command and so the
# same feature set as scripts/test's build step: after it, nothing is rebuilt
# (a build without the tests' dev-dependencies would unify features
# differently and rebuild the workspace).
add_cargo_payloads() {
	local pkg filter profile=() exe manifest dir list found=0 json=$work/cargo.json
	command -v cargo >/dev/null || die "cargo not found (needed to build the tests)"
	pkg=${WEFT_VM_PACKAGE:-}
	filter=${WEFT_VM_FILTER:-vm_}
	case ${WEFT_VM_PROFILE:-dev} in
	dev) ;;
	release) profile=(--release) ;;
	*) die "WEFT_VM_PROFILE must be dev or release, not ${WEFT_VM_PROFILE}" ;;
	esac
	log "building: cargo build ${profile[*]} --workspace --all-targets"
	(cd "$project_dir" && cargo build "${profile[@]}" --workspace --all-targets --message-format=json) >"$json" ||
		die "cargo build failed"
	while IFS=$'\t' read -r exe manifest; do
		found=$((found + 1))
		if LC_ALL=C grep -qa -- '--test-threads' "$exe"; then
			# libtest harness: ask it (on the host: --list runs nothing) whether
			# it has ignored tests matching the filter.
			if list=$("$exe" --list --ignored "$filter" 2>/dev/null) && ! grep -q ': test$' <<<"$list"; then
				log "no ignored '$filter' tests in ${exe##*/}, skipped"
				continue
			fi
		fi
		dir=${manifest%/*}
		add_payload "$dir" "CARGO_MANIFEST_DIR=$dir" -- "$exe" --ignored --test-threads=1 "$filter"
	done < <(grep '"reason":"compiler-artifact"' "$json" |
		grep -E '"profile":\{[^}]*"test":true' |
		if [[ -n $pkg ]]; then grep -E "\"package_id\":\"[^\"]*[/#]$pkg[@#\"]"; else cat; fi |
		sed -n 's/.*"manifest_path":"\([^"]*\)".*"executable":"\([^"]*\)".*/\2\t\1/p')
	((found)) || die "cargo built no test executable${pkg:+ for package $pkg}"
	# Programs the tests may start (CARGO_BIN_EXE_*) need their libraries too.
	while IFS= read -r exe; do put_libs "$exe"; done < <(grep '"reason":"compiler-artifact"' "$json" |
		sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
}

# Sets needs_9p: the project directory is shared read-only over 9p when a
# payload lives there; <target>/tmp (CARGO_TARGET_TMPDIR) is a writable tmpfs.
share_project() {
	needs_9p=0
	if ((shared_binaries)) || [[ $mode == cargo || $mode == none ]]; then
		needs_9p=1
		mkdir -p "$stage$project_dir"
		find "$project_dir" -maxdepth 3 -type d -path '*/target/tmp' 2>/dev/null >"$stage/etc/vm-test/tmpfs" || true
	fi
	touch "$stage/etc/vm-test/tmpfs"
}
