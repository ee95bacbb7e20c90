#!/bin/sh
# A bootloader for RAUC's `bootloader=custom` back-end, for the A/B tests: two slots A and B, each with a state
# (good/bad) and boot attempts left, and a primary; kept in the file named by $OTPATCH_BOOTSTATE.
#
# RAUC calls: get-primary | set-primary SLOT | get-state SLOT | set-state SLOT good|bad | get-current
# The tests call: boot (what a bootloader does at power-on: the primary if it is good and has attempts left,
#                 counting one attempt, else the other good slot; prints the slot booted)
#                 boot-fail (the primary does not come up until its attempts run out: the other slot boots)
set -eu
S="${OTPATCH_BOOTSTATE:?OTPATCH_BOOTSTATE names the boot state file}"
[ -f "$S" ] || printf 'primary=A\nbooted=A\nstate_A=good\nstate_B=good\ntries_A=3\ntries_B=3\n' >"$S"

get() { sed -n "s/^$1=//p" "$S"; }
put() {
  tmp="$S.tmp"
  grep -v "^$1=" "$S" >"$tmp" || true
  echo "$1=$2" >>"$tmp"
  mv "$tmp" "$S"
}
slot() {
  case "$1" in A | B) ;; *) echo "unknown slot: $1" >&2; exit 1 ;; esac
}
other() { if [ "$1" = A ]; then echo B; else echo A; fi; }

cmd="${1:-}"
case "$cmd" in
  get-primary) get primary ;;
  set-primary) slot "$2"; put primary "$2"; put "state_$2" good; put "tries_$2" 3 ;;
  get-state) slot "$2"; get "state_$2" ;;
  set-state)
    slot "$2"
    case "$3" in
      good) put "state_$2" good; put "tries_$2" 3 ;;
      bad) put "state_$2" bad; put "tries_$2" 0 ;;
      *) echo "unknown state: $3" >&2; exit 1 ;;
    esac
    ;;
  get-current) get booted ;;
  boot | boot-fail)
    p="$(get primary)"
    if [ "$cmd" = boot-fail ]; then put "state_$p" bad; put "tries_$p" 0; fi
    tries="$(get "tries_$p")"
    if [ "$(get "state_$p")" = good ] && [ "$tries" -gt 0 ]; then
      put "tries_$p" $((tries - 1))
      b="$p"
    else
      b="$(other "$p")"
      [ "$(get "state_$b")" = good ] || { echo "no bootable slot" >&2; exit 1; }
    fi
    put booted "$b"
    echo "$b"
    ;;
  *) echo "usage: $0 get-primary|set-primary|get-state|set-state|get-current|boot|boot-fail" >&2; exit 1 ;;
esac
