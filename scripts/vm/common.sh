# shellcheck shell=bash
# scripts/vm/common.sh: small helpers every part of scripts/vm-test uses.
# Sourced; defines functions only.

log() { printf 'vm-test: %s\n' "$*" >&2; }
say() { printf 'vm-test: %s\n' "$*"; } # on stdout, among the console output
die() {
	log "error: $*"
	exit 2
}
now_us() { local t=${EPOCHREALTIME/./}; printf '%s' "$((10#$t))"; }
secs() { printf '%d.%01d' "$(($1 / 1000000))" "$((($1 % 1000000) / 100000))"; }
# Quote one word for a POSIX shell (the guest's sh).
shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
# Read an unsigned little-endian integer of $3 bytes at offset $2 of file $1.
le_at() { local v; v=$(od -An -tu"$3" -j "$2" -N "$3" "$1"); printf '%s' "$((v))"; }
hex_at() { od -An -tx1 -j "$2" -N "$3" "$1" | tr -d ' \n'; }
