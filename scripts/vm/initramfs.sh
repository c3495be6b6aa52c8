# shellcheck shell=bash
# scripts/vm/initramfs.sh: the VM's root file system, two cpio archives
# concatenated: a base (busybox, the host's iproute2/ping/nft, their
# libraries, the kernel's modules) cached per host state, and a small per-run
# one (/init, payloads; see payloads.sh and guest/init).
# The guest is merged-/usr like Debian 12: /bin, /sbin, /lib, /lib64 are
# symlinks into /usr, so host paths resolve the same way in it.
# Sourced; defines functions and module lists only. Needs kernel.sh's results.
stage='' lower=/nonexistent
canon() { # guest path, with merged-/usr applied
	case $1 in
	/bin/* | /sbin/* | /lib/* | /lib64/*) printf '/usr%s' "$1" ;;
	*) printf '%s' "$1" ;;
	esac
}
# Copy file $1 into the stage at guest path $2 (default: the same path),
# unless the base already has it.
put() {
	local p
	p=$(canon "${2:-$1}")
	[[ -e $lower$p || -e $stage$p ]] && return 0
	mkdir -p "$stage${p%/*}"
	cp -L "$1" "$stage$p"
}
# Copy the shared libraries (and the dynamic loader) that ELF $1 needs.
missing_libs=()
put_libs() {
	local line lib
	[[ $(hex_at "$1" 0 4) == 7f454c46 ]] || return 0
	while IFS= read -r line; do
		case $line in
		*'=> not found'*) missing_libs+=("${line%% *} (for $1)") ;;
		*'=> /'*)
			lib=${line#*=> }
			put "${lib%% (*}"
			;;
		/*) put "${line%% (*}" ;;
		esac
	done < <(ldd "$1" 2>/dev/null | sed 's/^[[:space:]]*//' || true)
}
mkcpio() { # $1: directory, $2: archive
	(cd "$1" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
		cpio --null -o -H newc -R 0:0 --quiet) >"$2"
}

# Host programs copied into the guest (they must exist): iproute2, ping, nft.
tool_srcs=() tool_dsts=()
add_tool() { # $1: name or path; $2: 1 if required
	local src
	if ! src=$(PATH=$PATH:/usr/sbin:/sbin command -v "$1" 2>/dev/null) || [[ $src != /* ]]; then
		[[ $2 == 1 ]] && die "program $1 not found on this machine"
		return 0
	fi
	tool_srcs+=("$src")
	tool_dsts+=("$(canon "$src")")
}
find_tools() {
	local t
	for t in ip ping nft; do add_tool "$t" 1; done
	for t in bridge tc ss wg; do add_tool "$t" 0; done
	# netd's iptables backend (iptables-nft: rules in nf_tables, with
	# extensions the xtables plugins below describe).
	for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
		add_tool "$t" 1
	done
	for t in ${WEFT_VM_TOOLS:-}; do add_tool "$t" 1; done
	busybox=$(command -v busybox) || die "busybox not found"
	busybox_real=$(readlink -f "$busybox")
	dash=$(command -v dash || true)
}

# Kernel modules, each after its dependencies (modinfo's depends and softdep pre).
# Loaded at boot (crc32c before nf_tables: libcrc32c needs it):
boot_modules="8021q ipvlan macvlan dummy veth bridge vxlan tun wireguard
	crc32c_generic nf_tables nft_ct nft_nat nft_chain_nat nft_masq nft_redir
	nft_reject_inet nft_fib_inet nft_limit nf_conntrack_netlink sctp ${WEFT_VM_MODULES:-}"
# Only present, for the kernel to load on demand (through busybox modprobe):
demand_modules="geneve ipip ip_gre ip6_gre sit ip6_tunnel nlmon br_netfilter
	nft_log nft_numgen nft_hash nft_quota nft_connlimit nft_tproxy nft_socket
	nft_dup_netdev nft_fwd_netdev nft_fib_netdev nft_queue nft_osf nft_synproxy
	nft_compat nf_flow_table_inet nft_flow_offload nf_tables_bridge
	xt_addrtype xt_conntrack xt_tcpudp xt_sctp xt_nat xt_MASQUERADE xt_comment xt_multiport
	sch_netem sch_htb sch_tbf sch_fq_codel sch_ingress cls_bpf cls_u32
	cls_flower cls_matchall act_mirred act_gact act_bpf"
share_modules="virtio_pci 9pnet_virtio 9p"
declare -A mod_seen=()
mod_order=() mod_missing=()
add_module() { # $1: module name or alias
	local line key val i d
	local -a files=() deps=() pre=()
	while IFS= read -r line; do
		key=${line%%:*}
		val=${line#*:}
		case $key in
		filename)
			files+=("${val//[[:space:]]/}")
			deps+=('')
			pre+=('')
			;;
		depends) deps[-1]=${val//,/ } ;;
		softdep) [[ $val == *pre:* ]] && pre[-1]+=" $(sed 's/.*pre:\(.*\)/\1/; s/post:.*//' <<<"$val")" ;;
		esac
	done < <(modinfo -b "$kroot" -k "$kver" "$1" 2>/dev/null || true)
	if ((${#files[@]} == 0)); then
		mod_missing+=("$1")
		return 0
	fi
	for i in "${!files[@]}"; do
		[[ ${files[$i]} == /* ]] || continue # "(builtin)"
		[[ -n ${mod_seen[${files[$i]}]:-} ]] && continue
		mod_seen[${files[$i]}]=1
		for d in ${deps[$i]} ${pre[$i]}; do add_module "$d"; done
		mod_order+=("${files[$i]}")
	done
}
put_module() { # $1: module file; prints its path under /lib/modules/$kver and its name
	local f=$1 rel dst size tail_magic sig_len
	rel=${f#"$moddir"/}
	[[ $rel == /* ]] && rel=extra/${f##*/}
	case $rel in *.ko.xz | *.ko.gz | *.ko.zst) rel=${rel%.*} ;; esac
	dst=$stage/usr/lib/modules/$kver/$rel
	mkdir -p "${dst%/*}"
	case $f in
	*.ko.xz) xz -dc "$f" >"$dst" ;;
	*.ko.gz) gzip -dc "$f" >"$dst" ;;
	*.ko.zst) zstd -dcq "$f" -o "$dst" ;;
	*) cp "$f" "$dst" ;;
	esac
	# Drop the module signature: checking it costs time under TCG (the
	# kernel then notes an unsigned module; signatures are not enforced).
	size=$(stat -c %s "$dst")
	tail_magic=$(tail -c 28 "$dst" | od -An -c | tr -d ' \n')
	if [[ $tail_magic == '~Modulesignatureappended~\n' ]]; then
		sig_len=$(od -An -tu1 -j $((size - 32)) -N 4 "$dst" | {
			read -r a b c d
			echo $(((a << 24) | (b << 16) | (c << 8) | d))
		})
		truncate -s $((size - 28 - 12 - sig_len)) "$dst"
	fi
	local name=${rel##*/}
	name=${name%.ko}
	printf '%s %s\n' "$rel" "${name//-/_}"
}

build_base() { # $1: directory to fill; writes $1/base.cpio
	stage=$1/root
	lower=/nonexistent
	mkdir -p "$stage"/usr/{bin,sbin,lib,lib64} "$stage"/{etc/vm-test,proc,sys,dev,run,tmp,root,mnt,opt,var/tmp}
	ln -s usr/bin "$stage/bin"
	ln -s usr/sbin "$stage/sbin"
	ln -s usr/lib "$stage/lib"
	ln -s usr/lib64 "$stage/lib64"
	ln -s ../run "$stage/var/run"

	local i t applet
	for i in "${!tool_srcs[@]}"; do
		put "${tool_srcs[$i]}" "${tool_dsts[$i]}"
		put_libs "${tool_srcs[$i]}"
	done
	# iptables loads its extensions (libxt_*.so) with dlopen: ldd misses them.
	for t in /usr/lib/*/xtables/*.so; do
		if [[ -e $t ]]; then put "$t"; fi
	done
	# busybox for everything else. Its sh runs its own applets (e.g. its weak
	# `ip`) before looking at PATH, so /bin/sh is the host's dash (Essential
	# in Debian): scripts and `sh -c` then find the real tools through PATH.
	put "$busybox_real"
	put_libs "$busybox_real"
	if [[ -n $dash ]]; then
		put "$dash" /bin/sh
		put_libs "$dash"
	fi
	while IFS= read -r applet; do
		t=$(canon "/$applet")
		[[ -e $stage$t || -L $stage$t ]] && continue
		for i in "${tool_dsts[@]}"; do [[ ${i##*/} == "${t##*/}" ]] && continue 2; done
		ln -s "$busybox_real" "$stage$t"
	done < <("$busybox" --list-full)
	[[ -e $stage/usr/bin/busybox ]] || ln -s "$busybox_real" "$stage/usr/bin/busybox"

	cat >"$stage/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
	cat >"$stage/etc/group" <<'EOF'
root:x:0:
tty:x:5:
nogroup:x:65534:
EOF
	printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$stage/etc/hosts"
	printf 'passwd: files\ngroup: files\nhosts: files\n' >"$stage/etc/nsswitch.conf"
	: >"$stage/etc/fstab"
	# Interactive busybox shells (--shell) would also prefer applets: use functions.
	{
		echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin PS1="vm-test# "'
		for t in "${tool_dsts[@]}"; do printf '%s() { %s "$@"; }\n' "${t##*/}" "$t"; done
	} >"$stage/etc/profile"

	local f n
	for m in $boot_modules; do add_module "$m"; done
	for m in "${mod_missing[@]}"; do
		[[ " ${WEFT_VM_MODULES:-} " == *" $m "* ]] && die "module $m not found for kernel $kver"
	done
	((${#mod_missing[@]} == 0)) || log "warning: modules not found for $kver: ${mod_missing[*]}"
	for f in "${mod_order[@]}"; do put_module "$f"; done >"$stage/etc/vm-test/modules"
	n=${#mod_order[@]}
	for m in $share_modules; do add_module "$m"; done
	for f in "${mod_order[@]:n}"; do put_module "$f"; done >"$stage/etc/vm-test/modules.9p"
	n=${#mod_order[@]}
	for m in $demand_modules; do add_module "$m"; done
	for f in "${mod_order[@]:n}"; do put_module "$f"; done >/dev/null
	mkdir -p "$stage/usr/lib/modules/$kver"
	for f in modules.builtin modules.builtin.modinfo modules.order; do
		if [[ -e $moddir/$f ]]; then cp "$moddir/$f" "$stage/usr/lib/modules/$kver/"; fi
	done
	# modules.dep & co, so that `modprobe` (busybox) works for these modules.
	depmod -b "$stage" "$kver" 2>/dev/null || true
	mkcpio "$stage" "$1/base.cpio"
}

# Sets base: the cached base initramfs for this host state, built if missing.
# Its key covers everything that goes into it, these scripts included.
prepare_base() {
	local base_key t0 tmp_base
	base_key=$(
		{
			cat "$vm_dir"/*.sh "$vm_dir"/guest/* | sha256sum
			echo "$kver $stamp ${WEFT_VM_MODULES:-}"
			stat -c '%n %s %Y' "${tool_srcs[@]}" "$busybox_real" ${dash:+"$dash"} /var/lib/dpkg/status
		} | sha256sum | cut -c1-16
	)
	base=$cache_dir/base-$base_key
	if [[ ! -s $base/base.cpio ]]; then
		t0=$(now_us)
		tmp_base=$(mktemp -d "$cache_dir/.base.XXXXXX")
		tmp_paths+=("$tmp_base")
		build_base "$tmp_base"
		[[ -s $base/base.cpio ]] || rm -rf "$base"
		mv -T "$tmp_base" "$base" 2>/dev/null || true
		log "built the base initramfs in $(secs $(($(now_us) - t0)))s (cached in $base)"
	fi
	# Bases unused for a week are stale (older host state or script version).
	touch "$base"
	find "$cache_dir" -maxdepth 1 -name 'base-*' -mtime +7 -exec rm -rf {} + 2>/dev/null || true
}
