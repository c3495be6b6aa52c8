# shellcheck shell=bash
# scripts/vm/kernel.sh: the kernel the VM boots. Debian's linux-image-amd64
# names a kernel package; its .deb is fetched with `apt-get download` and
# unpacked into the cache (dpkg-deb --fsys-tarfile | tar -x): nothing is installed, no
# initramfs is built, the host's /boot is not touched. From its bzImage the
# ELF vmlinux is extracted once, to boot through QEMU's PVH entry (faster).
# Sourced; defines functions only. Needs packages.sh and $cache_dir.

# Module trees a VM without devices never loads (GPUs, sound, media, USB,
# SCSI, wireless and Ethernet NICs, ...): three quarters of the package's
# 400 MiB, left out when unpacking. A module named in WEFT_VM_MODULES from
# there is reported missing.
unneeded_modules=(sound drivers/{gpu,media,scsi,usb,infiniband,iio,staging,hid,hwmon,input,bluetooth}
	drivers/net/{wireless,ethernet,usb,can})

# `dpkg-deb -x`, leaving out the unneeded module trees.
unpack_kernel() { # $1: .deb, $2: directory
	local d excludes=()
	for d in "${unneeded_modules[@]}"; do excludes+=("--exclude=./lib/modules/*/kernel/$d" "--exclude=./usr/lib/modules/*/kernel/$d"); done
	mkdir -p "$2"
	dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --no-same-owner --wildcards "${excludes[@]}"
}

# Sets kver, kroot (the unpacked package), vmlinuz and moddir.
fetch_kernel() {
	kver=${WEFT_VM_KERNEL:-}
	if [[ -z $kver ]]; then
		kver=$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null |
			sed -n 's/^ *Depends: linux-image-\([^ <>]*\)$/\1/p' | head -n1)
		if [[ -z $kver ]]; then
			need_root_for "apt-get update (to learn linux-image-amd64's kernel)"
			apt_update
			kver=$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null |
				sed -n 's/^ *Depends: linux-image-\([^ <>]*\)$/\1/p' | head -n1)
		fi
		[[ -n $kver ]] || die "apt knows no linux-image-amd64: set WEFT_VM_KERNEL to a kernel version (e.g. 6.1.0-57-amd64)"
		kver=${kver%-unsigned}
	fi
	kroot=$cache_dir/kernel-$kver
	if [[ ! -e $kroot/.unpacked ]]; then
		local tmp deb
		tmp=$(mktemp -d "$cache_dir/.kernel.XXXXXX")
		tmp_paths+=("$tmp")
		log "fetching linux-image-$kver (apt-get download, unpacked into $kroot; nothing installed)"
		apt_log=${apt_log:-$cache_dir/apt.log}
		if ! (cd "$tmp" && apt-get "${apt_opts[@]}" download "linux-image-$kver" >>"$apt_log" 2>&1); then
			need_root_for "apt-get update (to download linux-image-$kver)"
			apt_update
			(cd "$tmp" && apt-get "${apt_opts[@]}" download "linux-image-$kver" >>"$apt_log" 2>&1) ||
				die "apt-get download linux-image-$kver failed: see $apt_log"
		fi
		deb=$(find "$tmp" -maxdepth 1 -name 'linux-image-*.deb' | head -n1)
		[[ -n $deb ]] || die "apt-get download gave no linux-image .deb in $tmp"
		unpack_kernel "$deb" "$tmp/root" || die "unpacking $deb failed"
		rm -f "$deb"
		touch "$tmp/root/.unpacked"
		rm -rf "$kroot"
		mv -T "$tmp/root" "$kroot"
	fi
	vmlinuz=$kroot/boot/vmlinuz-$kver
	moddir=$kroot/lib/modules/$kver
	[[ -d $moddir ]] || moddir=$kroot/usr/lib/modules/$kver
	[[ -r $vmlinuz ]] || die "no kernel image $vmlinuz in the unpacked linux-image-$kver"
	[[ -d $moddir ]] || die "no modules directory for $kver in $kroot"
	# The package's postinst would run depmod; modinfo -b needs its output.
	if [[ ! -s $moddir/modules.dep ]]; then
		depmod -b "$kroot" "$kver" || die "depmod -b $kroot $kver failed"
	fi
}

# Decompress $4 bytes at offset $3 of $1 (format $2) into $5; succeed only if
# the result is an ELF file (of $6 bytes, if given).
try_decompress() {
	local img=$1 fmt=$2 off=$3 len=$4 out=$5 want=${6:-} dec
	case $fmt in
	gzip) dec=(gzip -dc) ;;
	xz) dec=(xz -dc --single-stream) ;;
	lzma) dec=(xz -dc --format=lzma) ;;
	zstd) dec=(zstd -dcq) ;;
	lz4) dec=(lz4 -dcq) ;;
	bzip2) dec=(bzip2 -dc) ;;
	lzo) dec=(lzop -dc) ;;
	*) return 1 ;;
	esac
	local pkg
	case $fmt in gzip) pkg=gzip ;; xz | lzma) pkg=xz-utils ;; lzo) pkg=lzop ;; *) pkg=$fmt ;; esac
	command -v "${dec[0]}" >/dev/null || ensure_packages "$pkg"
	# Trailing bytes (the kernel appends the uncompressed size) may make the
	# decompressor complain; the ELF check below is what counts.
	{ dd if="$img" bs=1M iflag=skip_bytes,count_bytes skip="$off" count="$len" status=none |
		"${dec[@]}" >"$out"; } 2>/dev/null || true
	[[ $(hex_at "$out" 0 4) == 7f454c46 ]] || return 1
	[[ -z $want || $(stat -c %s "$out") == "$want" ]]
}

# Extract the ELF vmlinux from a bzImage, like the kernel's
# scripts/extract-vmlinux: use the boot header's payload_offset/length (boot
# protocol >= 2.08) and the compression magic found there; else scan for magics.
extract_vmlinux() {
	local img=$1 out=$2 fmt='' f off len magic
	local -A magics=([gzip]='1f8b08' [xz]='fd377a585a00' [zstd]='28b52ffd' [lzma]='5d000000'
		[lz4]='02214c18' [bzip2]='425a68' [lzo]='894c5a4f00')
	if [[ $(hex_at "$img" $((0x202)) 4) == 48647253 ]] && (($(le_at "$img" $((0x206)) 2) >= 0x208)); then
		local setup_sects
		setup_sects=$(le_at "$img" $((0x1f1)) 1)
		((setup_sects)) || setup_sects=4
		off=$(((setup_sects + 1) * 512 + $(le_at "$img" $((0x248)) 4)))
		len=$(le_at "$img" $((0x24c)) 4)
		for f in "${!magics[@]}"; do
			magic=${magics[$f]}
			[[ $(hex_at "$img" "$off" $((${#magic} / 2))) == "$magic" ]] && fmt=$f
		done
		# The payload ends with its uncompressed size (le32), in every format.
		if [[ -n $fmt ]] && try_decompress "$img" "$fmt" "$off" "$len" "$out" \
			"$(le_at "$img" $((off + len - 4)) 4)"; then
			log "extracted vmlinux ($fmt payload at offset $off)"
			return 0
		fi
	fi
	# Fallback: scan the whole image for each compression magic.
	local size pat o
	size=$(stat -c %s "$img")
	for fmt in xz zstd gzip lzma lz4 bzip2 lzo; do
		magic=${magics[$fmt]}
		# shellcheck disable=SC2001 # (every pair of hex digits)
		pat=$(sed 's/../\\x&/g' <<<"$magic")
		while IFS=: read -r o _; do
			if try_decompress "$img" "$fmt" "$o" $((size - o)) "$out"; then
				log "extracted vmlinux ($fmt stream at offset $o, by scanning)"
				return 0
			fi
		done < <(LC_ALL=C grep -obUaP "$pat" "$img" | head -n 20 || true)
	done
	return 1
}

# Sets boot_kernel: the cached vmlinux if it has a PVH entry point, else the
# bzImage. The cache records, per kernel image (size, mtime, version), which.
choose_boot_kernel() {
	local cached tmp_vmlinux
	vmlinux=$cache_dir/vmlinux-$kver
	stamp="$(stat -c '%s %Y' "$vmlinuz") $kver"
	cached=$(cat "$vmlinux.src" 2>/dev/null || true)
	if [[ $cached != "$stamp pvh" && $cached != "$stamp bzimage" ]] || [[ $cached == *pvh && ! -s $vmlinux ]]; then
		tmp_vmlinux=$(mktemp "$cache_dir/.vmlinux.XXXXXX")
		tmp_paths+=("$tmp_vmlinux")
		cached="$stamp bzimage"
		if extract_vmlinux "$vmlinuz" "$tmp_vmlinux"; then
			# QEMU boots an ELF kernel through -kernel only via its PVH entry
			# point: look for the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (18).
			if LC_ALL=C grep -qaUP '\x04\x00\x00\x00[\x04\x08]\x00\x00\x00\x12\x00\x00\x00Xen\x00' "$tmp_vmlinux"; then
				mv -f "$tmp_vmlinux" "$vmlinux"
				cached="$stamp pvh"
			else
				log "vmlinux has no PVH entry point: booting the bzImage (slower)"
			fi
		else
			log "could not extract vmlinux from $vmlinuz: booting the bzImage (slower)"
		fi
		[[ $cached == *pvh ]] || rm -f "$vmlinux"
		printf '%s\n' "$cached" >"$vmlinux.src"
	fi
	boot_kernel=$vmlinuz
	[[ $cached == *pvh ]] && boot_kernel=$vmlinux
	return 0
}

# QEMU said it cannot boot the extracted vmlinux: the next runs use the bzImage.
forget_pvh() {
	log "QEMU cannot boot the extracted vmlinux: the next runs boot the bzImage"
	rm -f "$vmlinux"
	printf '%s bzimage\n' "$stamp" >"$vmlinux.src"
}
