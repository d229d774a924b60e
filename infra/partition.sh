#!/usr/bin/env bash
# A network partition on this machine, for the chaos suite: packets to and from the given
# TCP ports (optionally of one loopback address) are dropped by an nftables table of the
# caller's own. Not a refusal: connections hang and retransmit, as across a broken link, and
# carry on when it heals. Needs root (CAP_NET_ADMIN); installs Debian's nftables if `nft` is
# missing.
#
#   infra/partition.sh check                   exit 0 when partitions can be made here
#   infra/partition.sh add NAME [ADDR:]PORT…   drop packets to and from each PORT (of ADDR)
#   infra/partition.sh remove NAME             heal: delete the table (no error if absent)
set -euo pipefail

ensure_nft() {
  command -v nft >/dev/null && return 0
  echo "partition.sh: installing nftables from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq nftables >&2
}

table() { echo "sharedcare_partition_$1"; }

case "${1:-}" in
  check)
    ensure_nft
    t="$(table check$$)"
    nft add table inet "$t" && nft delete table inet "$t"
    ;;
  add)
    [ $# -ge 3 ] || { echo "usage: $0 add NAME [ADDR:]PORT…" >&2; exit 2; }
    ensure_nft
    t="$(table "$2")"
    shift 2
    nft add table inet "$t"
    nft add chain inet "$t" out '{ type filter hook output priority 0; policy accept; }'
    for target in "$@"; do
      port="${target##*:}"
      case "$port" in ''|*[!0-9]*) echo "partition.sh: $target: PORT must be a number" >&2; exit 2 ;; esac
      if [ "$port" != "$target" ]; then
        addr="${target%:*}"
        nft add rule inet "$t" out ip daddr "$addr" tcp dport "$port" drop
        nft add rule inet "$t" out ip saddr "$addr" tcp sport "$port" drop
      else
        nft add rule inet "$t" out tcp dport "$port" drop
        nft add rule inet "$t" out tcp sport "$port" drop
      fi
    done
    ;;
  remove)
    [ $# -eq 2 ] || { echo "usage: $0 remove NAME" >&2; exit 2; }
    nft delete table inet "$(table "$2")" 2>/dev/null || true
    ;;
  *)
    echo "usage: $0 check | add NAME [ADDR:]PORT… | remove NAME" >&2
    exit 2
    ;;
esac
