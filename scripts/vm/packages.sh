# shellcheck shell=bash
# scripts/vm/packages.sh: install the Debian packages vm-test needs without
# changing anything already installed. Every install is simulated first
# (apt-get -s) and refused if apt would remove or upgrade a package; QEMU is
# installed at the version of the QEMU packages already there (from backports
# if that is where they came from). apt's output goes to $apt_log, not the log.
# Sourced; defines functions only. Needs $cache_dir.

apt_opts=()   # options for every apt call (a private source list, for backports)
apt_target=() # -t SUITE, when the packages must come from backports
apt_updated=0
apt_log=''
sudo_cmd=()

# Run apt-get (as root, through sudo if need be) with its output in $apt_log.
apt_run() {
	apt_log=${apt_log:-$cache_dir/apt.log}
	printf '\n$ apt-get %s\n' "$*" >>"$apt_log"
	"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" "$@" >>"$apt_log" 2>&1
}

apt_update() {
	((apt_updated)) && return 0
	log "apt-get update (output in ${apt_log:-$cache_dir/apt.log})"
	apt_run update -qq || die "apt-get update failed: see ${apt_log}"
	apt_updated=1
}

need_root_for() { # $1: what for
	((EUID == 0)) && return 0
	command -v sudo >/dev/null || die "$1: run as root or through sudo"
	sudo_cmd=(sudo)
}

# Versions of qemu-system-x86 the configured sources offer, one a line.
qemu_versions() {
	apt-cache "${apt_opts[@]}" madison qemu-system-x86 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2); print $2 }'
}

# Use a private copy of the machine's apt sources plus $codename-backports,
# kept in the cache: /etc/apt is left as it is.
use_backports() {
	local codename dir f
	codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
	[[ -n $codename ]] || die "cannot tell this system's release (no VERSION_CODENAME in /etc/os-release)"
	dir=$cache_dir/apt
	mkdir -p "$dir/parts" "$dir/lists/partial"
	rm -f "$dir"/parts/*
	for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
		if [[ -e $f ]]; then cp "$f" "$dir/parts/"; fi
	done
	cat >"$dir/parts/weft-vm-backports.sources" <<-SOURCES
		Types: deb
		URIs: http://deb.debian.org/debian
		Suites: $codename-backports
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	SOURCES
	apt_opts=(-o "Dir::Etc::SourceParts=$dir/parts" -o "Dir::State::Lists=$dir/lists")
	apt_target=(-t "$codename-backports")
	apt_updated=0
}

# Sets qemu_pkg: the qemu-system-x86 to install, at the version of an
# installed QEMU package (they must all be one version), else the
# distribution's. Not run in a subshell: it may switch apt to backports.
pick_qemu() {
	local p st v=''
	for p in qemu-system-common qemu-system-data qemu-utils qemu-block-extra; do
		read -r st v < <(dpkg-query -W -f='${db:Status-Status} ${Version}\n' "$p" 2>/dev/null || echo none)
		[[ $st == installed ]] && break
		v=''
	done
	qemu_pkg=qemu-system-x86
	[[ -n $v ]] || return 0
	if ! qemu_versions | grep -qxF -- "$v"; then
		apt_update
		if ! qemu_versions | grep -qxF -- "$v" && [[ $v == *~bpo* ]]; then
			log "installed $p is $v, from backports: installing qemu-system-x86 from there too"
			use_backports
			apt_update
		fi
		qemu_versions | grep -qxF -- "$v" ||
			die "$p $v is installed, and no apt source offers qemu-system-x86 $v to match it: install qemu-system-x86 at that version yourself"
	fi
	qemu_pkg=qemu-system-x86=$v
}

# Install the packages among $@ that are missing, or refuse if that would
# remove or upgrade anything.
ensure_packages() {
	local p st missing=() specs=() sim bad
	declare -A have=()
	while read -r p st; do have[$p]=$st; done < <(
		dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null || true
	)
	for p in "$@"; do [[ ${have[$p]:-} == installed ]] || missing+=("$p"); done
	((${#missing[@]})) || return 0
	command -v apt-get >/dev/null || die "missing packages: ${missing[*]} (and no apt-get)"
	need_root_for "missing packages ${missing[*]}"
	for p in "${missing[@]}"; do
		if [[ $p == qemu-system-x86 ]]; then
			pick_qemu
			specs+=("$qemu_pkg")
		else
			specs+=("$p")
		fi
	done
	apt_update
	sim=$(apt-get "${apt_opts[@]}" install -s "${apt_target[@]}" --no-install-recommends "${specs[@]}" 2>&1) ||
		die "apt cannot install ${specs[*]}: $(grep -E '^(E:| )' <<<"$sim" | head -n 5)"
	# "Remv pkg [ver]" removes; "Inst pkg [old] (new ...)" upgrades or downgrades.
	bad=$(grep -E '^Remv |^Inst [^ ]+ \[' <<<"$sim" || true)
	if [[ -n $bad ]]; then
		log "installing ${specs[*]} would change packages already installed:"
		printf '  %s\n' "$bad" >&2
		die "refusing to remove or upgrade anything: install these packages yourself, at versions matching what is installed"
	fi
	log "installing ${specs[*]} (and $(grep -c '^Inst ' <<<"$sim") packages in all; nothing removed or upgraded)"
	apt_run install -y -qq -o Dpkg::Use-Pty=0 "${apt_target[@]}" --no-install-recommends "${specs[@]}" ||
		die "apt-get install ${specs[*]} failed: see $apt_log"
}
