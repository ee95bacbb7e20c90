# boot: the gateway comes up: modules, nftables, loopback, the system bus, our binaries.
# Sourced by /init in a subshell with set -eu -o pipefail (see lib.sh for the helpers).

check modules-loaded sh -c 'for m in virtio_net nf_tables nft_ct nf_conntrack nft_reject_inet tun unix_diag; do grep -q "^$m " /proc/modules || exit 1; done'
check eth0-up sh -c 'ip addr show eth0 | grep -q "inet 10.0.2.15/24"'

# nftables: a table with the kinds of rules the segmentation backend will use
# (conntrack state, reject), listed, then deleted.
t=$(hil_ms)
check nft-create nft -f - <<'NFT'
table inet hil_boot {
  chain input {
    type filter hook input priority 0; policy accept;
    ct state established,related accept
    iifname "lo" accept
    tcp dport 1 reject with tcp reset
  }
}
NFT
check nft-listed sh -c 'nft list ruleset | grep -q "table inet hil_boot"'
check nft-delete nft delete table inet hil_boot
check nft-gone sh -c '! nft list tables | grep -q hil_boot'
hil_time nft "$t"

check loopback-ping ping -c 1 -W 2 127.0.0.1

# The system bus, as otpatchd will find it.
mkdir -p /run/dbus
t=$(hil_ms)
check dbus-daemon dbus-daemon --system --fork
check dbus-socket wait_for 5000 test -S /run/dbus/system_bus_socket
if command -v dbus-send >/dev/null; then
  check dbus-call dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.ListNames
fi
hil_time dbus "$t"

for b in otpatchd otpatchctl otpatch-plcsim; do
  if command -v "$b" >/dev/null; then
    check "$b-runs" sh -c "$b --help >/dev/null"
  else
    info "$b not in this image (build it with cargo build --release first)"
  fi
done
if command -v criu >/dev/null; then
  # CRIU is for a later issue: its verdict is evidence, not a check of this scenario.
  info "criu check: $(criu check 2>&1 | tail -n 1)"
fi
info "kernel $(uname -r) tainted=$(cat /proc/sys/kernel/tainted)"
