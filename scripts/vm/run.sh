# shellcheck shell=bash
# scripts/vm/run.sh: boot the VM and follow its console. The per-run
# initramfs (guest/init, its config, the payloads) goes after the cached base;
# QEMU runs under `timeout`, its serial console is read line by line: marker
# lines from guest/init are turned into "vm-test: [i/n] ..." lines and exit
# codes, everything else is passed through.
# Sourced; defines functions only.

# Writes $initrd: the base archive and this run's, concatenated.
pack_initramfs() {
	{
		printf "M='%s'\nKVER='%s'\nSHARE=%s\nNEEDS_9P=%s\nSHELL_AFTER=%s\n" \
			"$marker" "$kver" "$(shq "$project_dir")" "$needs_9p" "$shell"
	} >"$stage/etc/vm-test/config"
	cp "$vm_dir/guest/init" "$stage/init"
	chmod +x "$stage/init"
	mkcpio "$stage" "$work/run.cpio"
	initrd=$work/initramfs.cpio
	cat "$base/base.cpio" "$work/run.cpio" >"$initrd"
}

# Sets qemu: the command line.
qemu_command() {
	local mem smp accel append
	mem=${WEFT_VM_MEM:-1024}
	# One vCPU: under TCG on a 2-core machine a second one made boot, module
	# loading and the self-check slower (vCPU threads compete with each other).
	smp=${WEFT_VM_SMP:-1}
	accel=${WEFT_VM_ACCEL:-tcg}
	[[ $accel == tcg ]] && accel=tcg,thread=multi
	# cryptomgr.notests skips the crypto API self-tests (seconds under TCG).
	append="console=ttyS0 quiet panic=-1 oops=panic rdinit=/init cryptomgr.notests no_timer_check"
	append+=" tsc=reliable i8042.noaux ${WEFT_VM_APPEND:-}"
	qemu=(qemu-system-x86_64 -machine pc -accel "$accel" -cpu max -m "$mem" -smp "$smp"
		-nodefaults -no-user-config -nographic -no-reboot
		-kernel "$boot_kernel" -initrd "$initrd" -append "$append")
	# qboot (shipped with QEMU) starts the kernel faster than SeaBIOS, silently.
	[[ -e /usr/share/qemu/qboot.rom ]] && qemu+=(-bios qboot.rom)
	if ((needs_9p)); then
		# shellcheck disable=SC2054 # (commas separate QEMU's sub-options)
		qemu+=(-fsdev "local,id=share,path=${project_dir//,/,,},security_model=none,readonly=on"
			-device virtio-9p-pci,fsdev=share,mount_tag=weft)
	fi
}

# Runs the VM, reading its console. Sets rcs (payload exit codes), qrc,
# current, saw_done, pvh_error and the times t_qemu, t_init, t_end and
# guest_init, guest_ready, guest_done.
run_vm() {
	local fifo line kind a b before verdict
	fifo=$work/console
	mkfifo "$fifo"
	t_qemu=$(now_us)
	timeout -k 10 "$timeout_s" "${qemu[@]}" -serial stdio </dev/null >"$fifo" 2>&1 &
	qemu_pid=$!

	declare -gA rcs=()
	t_init='' guest_init='' guest_ready='' guest_done='' current='' saw_done=0 pvh_error=0
	while IFS= read -r line || [[ -n $line ]]; do
		line=${line%$'\r'}
		if [[ $line == *"$marker"* ]]; then
			read -r kind a b <<<"${line#*"$marker" }"
			before=${line%%"$marker"*}
			[[ -n $before ]] && printf '%s\n' "$before"
			case $kind in
			init)
				t_init=$(now_us)
				guest_init=$a
				say "VM reached /init after $(secs $((t_init - t_qemu)))s (guest uptime ${a}s)"
				;;
			ready) guest_ready=$a ;;
			start)
				current=$a
				say "[$a/${#names[@]}] running ${names[$((a - 1))]}"
				;;
			exit)
				rcs[$a]=$b
				if [[ $b == 0 ]]; then verdict=passed; else verdict=FAILED; fi
				say "[$a/${#names[@]}] exit code $b: $verdict (${names[$((a - 1))]})"
				current=''
				;;
			done)
				saw_done=1
				guest_done=$a
				;;
			esac
			continue
		fi
		[[ $line == *"without PVH ELF Note"* ]] && pvh_error=1
		[[ $line =~ ^\[\ *[0-9.]+\]\ reboot:\ Power\ down$ ]] && continue
		printf '%s\n' "$line"
	done <"$fifo"
	qrc=0
	wait "$qemu_pid" || qrc=$?
	qemu_pid=''
	t_end=$(now_us)
}
