# The host's side of the otpatchd scenarios; sourced by run.sh (bash), not run.
#
# host_start           once per run: a throwaway PKI (openssl CLI), the signed bundles and one signed index
#                      per scenario, nginx with mutual TLS and the PLC simulator, all on 127.0.0.1 (the guest
#                      reaches them as 10.0.2.2 through QEMU's user network)
# host_initrd S OUT    the guest's initramfs plus a small cpio for scenario S: the policy, the trust anchor,
#                      the server CA, the client certificate and key (the kernel unpacks concatenated cpio
#                      archives as one)
# host_plc CMD         one command to the PLC simulator's control port; prints its reply
# host_stop            stops what host_start started (run.sh's exit trap calls it)
#
# Needs: openssl, nginx, e2fsprogs (mkfs.ext4) and target/release/{otpatchctl,otpatch-plcsim}.
# Environment: HIL_HTTPS_PORT, HIL_PLC_PORT (default: free ports picked at start).

HOST_DIR="$B/host"
HOST_PIDS=()
HOST_PLC_CONTROL=
HOST_HTTPS_PORT=
HOST_PLC_PORT=
# The host's end of the otpatchd-criu guest's forwarded Modbus port (QEMU hostfwd, loopback only).
HOST_FWD_PORT=
# The bundle's compatible string and version; the guest's policy says the same.
HOST_COMPATIBLE=hil-gw
HOST_VERSION=1.0.0

host_say() { printf '[hil-host] %s\n' "$*"; }
host_die() { printf '[hil-host] error: %s\n' "$*" >&2; exit 2; }

# A port nobody listens on now (the kernel picks it; tiny race, fine for a test host).
host_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# host_wait_port PORT MS: until something accepts on 127.0.0.1:PORT; 1 after MS.
host_wait_port() {
  local port=$1 deadline=$(( $(date +%s%N) / 1000000 + $2 ))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    (( $(date +%s%N) / 1000000 < deadline )) || return 1
    sleep 0.05
  done
}

# ---------------------------------------------------------------- PKI
# One openssl config for every certificate: the extensions of each kind in its own section.
host_openssl_cnf() {
  cat <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:10.0.2.2,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:hil-gw
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[signer]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = codeSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
}

# host_ca NAME CN: a self-signed CA, NAME.pem + NAME.key. P-256: cheap to verify in the TCG guest.
host_ca() {
  openssl req -x509 -new -config openssl.cnf -extensions ca -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -nodes -keyout "$1.key" -out "$1.pem" -subj "/CN=$2" -days 7 2>/dev/null
}

# host_leaf CA NAME CN SECTION: a leaf issued by CA; the key is PKCS#8 (what otpatchctl bundle create takes).
host_leaf() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$2.key" 2>/dev/null
  openssl req -new -config openssl.cnf -key "$2.key" -subj "/CN=$3" -out "$2.csr" 2>/dev/null
  openssl x509 -req -in "$2.csr" -CA "$1.pem" -CAkey "$1.key" -set_serial "0x$(openssl rand -hex 8)" \
    -days 7 -extfile openssl.cnf -extensions "$4" -out "$2.pem" 2>/dev/null
  rm -f "$2.csr"
}

host_pki() {
  mkdir -p "$HOST_DIR/pki"
  (
    cd "$HOST_DIR/pki"
    host_openssl_cnf >openssl.cnf
    host_ca server-ca "hil server CA"
    host_leaf server-ca server "hil patch server" server
    host_ca client-ca "hil client CA"
    host_leaf client-ca client "hil-gw" client
    # The signer is issued by the signing root (the gateway's trust anchor): webpki wants CA + leaf.
    host_ca signing-root "hil signing root"
    host_leaf signing-root signer "hil bundle signer" signer
  ) || host_die "making the PKI failed"
}

# ---------------------------------------------------------------- bundles and indexes
# host_bundle OUT PAYLOAD KERNEL_RELEASE [VERSION [EXPIRES]]   (EXPIRES: RFC 3339; default otpatchctl's)
host_bundle() {
  local expires=()
  [[ -z ${5:-} ]] || expires=(--expires "$5")
  "$REPO/target/release/otpatchctl" bundle create --kind livepatch --compatible "$HOST_COMPATIBLE" \
    --version "${4:-$HOST_VERSION}" --kernel-release "$3" --payload "$2" "${expires[@]}" \
    --signer-cert "$HOST_DIR/pki/signer.pem" --signer-key "$HOST_DIR/pki/signer.key" --out "$1" >/dev/null ||
    host_die "otpatchctl bundle create $1 failed"
}

# host_index DIR FILE [VERSION [AGE [KIND]]]: DIR/index.json naming DIR/FILE (of KIND, default livepatch),
# issued AGE seconds ago (default 60), and its detached CMS signature.
host_index() {
  local dir=$1 file=$2 version=${3:-$HOST_VERSION} age=${4:-60} kind=${5:-livepatch} now issued expires
  now=$(date +%s)
  issued=$(date -u -d "@$((now - age))" +%Y-%m-%dT%H:%M:%SZ)
  expires=$(date -u -d "@$((now + 86400))" +%Y-%m-%dT%H:%M:%SZ)
  printf '{"format":1,"issued":"%s","expires":"%s","bundles":[{"compatible":"%s","version":"%s","kind":"%s","file":"%s","size":%s,"sha256":"%s"}]}\n' \
    "$issued" "$expires" "$HOST_COMPATIBLE" "$version" "$kind" "$file" "$(stat -c %s "$dir/$file")" \
    "$(sha256sum "$dir/$file" | cut -d' ' -f1)" >"$dir/index.json"
  openssl cms -sign -binary -outform DER -in "$dir/index.json" -signer "$HOST_DIR/pki/signer.pem" \
    -inkey "$HOST_DIR/pki/signer.key" -out "$dir/index.json.sig" || host_die "signing $dir/index.json failed"
}

# The web root: one directory per scenario (the policy's server url names it), each with its own index.
host_www() {
  local www="$HOST_DIR/www" kver ko="$B/modules/otpatch_lp_cmdline.ko"
  kver="$(cat "$B/kver")"
  mkdir -p "$www"
  host_bundle "$www/good.otb" "$ko" "$kver"
  # A release the guest does not run: Debian's PREEMPT_RT flavour of the same ABI.
  host_bundle "$www/wrong-kernel.otb" "$ko" "${kver%-amd64}-rt-amd64"
  # Signed for the right release, but the module inside has a forged vermagic.
  host_bundle "$www/badmagic.otb" "$B/modules/otpatch_lp_cmdline_badmagic.ko" "$kver"
  # One byte of the payload (the module) flipped after signing; the index is made for the tampered file, so
  # the download succeeds and only the bundle's own verification can catch it.
  cp "$www/good.otb" "$www/tampered.otb"
  python3 - "$www/tampered.otb" <<'EOF'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(4096)
    b = f.read(1)
    f.seek(4096)
    f.write(bytes([b[0] ^ 0x01]))
EOF
  # The cumulative successor (v2 marker), a newer version: otpatchd-v1v2 commits good.otb, then moves to it.
  host_bundle "$www/v2.otb" "$B/modules/otpatch_lp_cmdline_v2.ko" "$kver" 1.1.0
  mkdir -p "$www/otpatchd-v1v2-next"
  ln -f "$www/v2.otb" "$www/otpatchd-v1v2-next/v2.otb"
  local s f
  for s in otpatchd-happy:good otpatchd-health-rollback:good otpatchd-reboot:good otpatchd-v1v2:good \
    otpatchd-criu:good otpatchd-criu-bad:good image-systemd:good image-lp-powercut:good \
    otpatchd-tampered:tampered otpatchd-wrong-kernel:wrong-kernel otpatchd-badmagic:badmagic; do
    f="${s#*:}.otb"
    s="${s%%:*}"
    mkdir -p "$www/$s"
    ln -f "$www/$f" "$www/$s/$f"
    host_index "$www/$s" "$f"
  done
  # After v1's index, and issued 30 s later than it: the gateway refuses an index older than one it accepted
  # (replay), so v2's must be the newer one even when both are made within the same second.
  host_index "$www/otpatchd-v1v2-next" v2.otb 1.1.0 30
  # The image's months scenario: v1 whose manifest expires in an hour (the guest's clock is moved past it
  # later), then v2 (issued later), then an A/B update (run.sh adds image-months-ab/, issued later still).
  mkdir -p "$www/image-months" "$www/image-months-v2"
  host_bundle "$www/image-months/v1.otb" "$ko" "$kver" "$HOST_VERSION" "$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)"
  host_index "$www/image-months" v1.otb "$HOST_VERSION" 90
  ln -f "$www/v2.otb" "$www/image-months-v2/v2.otb"
  host_index "$www/image-months-v2" v2.otb 1.1.0 60
}

# ---------------------------------------------------------------- services
host_nginx() {
  local d="$HOST_DIR/nginx"
  mkdir -p "$d/logs" "$d/tmp"
  cat >"$d/nginx.conf" <<EOF
# Foreground, one process (it stays the child run.sh kills), everything under hil/build/host/.
daemon off;
master_process off;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/logs/error.log info;
events { worker_connections 64; }
http {
  access_log $d/logs/access.log;
  client_body_temp_path $d/tmp;
  proxy_temp_path $d/tmp;
  fastcgi_temp_path $d/tmp;
  uwsgi_temp_path $d/tmp;
  scgi_temp_path $d/tmp;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$HOST_HTTPS_PORT ssl;
    ssl_certificate $HOST_DIR/pki/server.pem;
    ssl_certificate_key $HOST_DIR/pki/server.key;
    ssl_client_certificate $HOST_DIR/pki/client-ca.pem;
    ssl_verify_client on;
    root $HOST_DIR/www;
  }
}
EOF
  nginx -c "$d/nginx.conf" -p "$d" </dev/null >"$d/logs/stdout.log" 2>&1 &
  HOST_PIDS+=($!)
  host_wait_port "$HOST_HTTPS_PORT" 5000 || { cat "$d/logs/error.log" >&2; host_die "nginx did not start"; }
  # The same request the gateway makes, from the host (when curl is there): proves the server side before
  # any guest boots.
  if command -v curl >/dev/null; then
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$HOST_DIR/pki/server-ca.pem" \
      --cert "$HOST_DIR/pki/client.pem" --key "$HOST_DIR/pki/client.key" \
      "https://127.0.0.1:$HOST_HTTPS_PORT/otpatchd-happy/index.json" 2>/dev/null || true)
    [[ "$code" == 200 ]] || host_die "nginx does not serve the index with the client certificate (HTTP '$code')"
  fi
}

host_plcsim() {
  local log="$HOST_DIR/plcsim.log"
  HOST_PLC_CONTROL="127.0.0.1:$(host_free_port)"
  # The temperature the health probe reads: 50, inside the policy's 10..90.
  "$REPO/target/release/otpatch-plcsim" --listen "127.0.0.1:$HOST_PLC_PORT" --control "$HOST_PLC_CONTROL" \
    -e "set holding 0 u16 50" </dev/null >"$log" 2>&1 &
  HOST_PIDS+=($!)
  host_wait_port "${HOST_PLC_CONTROL##*:}" 5000 || { cat "$log" >&2; host_die "otpatch-plcsim did not start"; }
}

# host_plc CMD: one command line to the simulator's control port, its one reply line on stdout.
host_plc() {
  local reply
  exec 7<>"/dev/tcp/${HOST_PLC_CONTROL%:*}/${HOST_PLC_CONTROL##*:}" || return 1
  printf '%s\n' "$1" >&7
  IFS= read -r -t 5 reply <&7 || reply="(no reply)"
  exec 7>&-
  printf '%s\n' "$reply"
}

host_start() {
  local t0
  t0=$(date +%s%N)
  for tool in openssl nginx mkfs.ext4 python3; do
    command -v "$tool" >/dev/null || host_die "$tool is missing (apt-get install -y --no-install-recommends openssl nginx e2fsprogs)"
  done
  for b in otpatchctl otpatch-plcsim otpatchd; do
    [[ -x "$REPO/target/release/$b" ]] || host_die "target/release/$b is missing: cargo build --release -p otpatchd -p otpatchctl -p otpatch-plcsim"
  done
  rm -rf "$HOST_DIR"
  mkdir -p "$HOST_DIR"
  HOST_HTTPS_PORT="${HIL_HTTPS_PORT:-$(host_free_port)}"
  HOST_PLC_PORT="${HIL_PLC_PORT:-$(host_free_port)}"
  HOST_FWD_PORT="${HIL_FWD_PORT:-$(host_free_port)}"
  host_pki
  host_www
  host_nginx
  host_plcsim
  host_say "PKI, 8 signed indexes, nginx on 127.0.0.1:$HOST_HTTPS_PORT (mutual TLS), PLC simulator on 127.0.0.1:$HOST_PLC_PORT (control $HOST_PLC_CONTROL) in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}

host_stop() {
  local p
  for p in "${HOST_PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${HOST_PIDS[@]}"; do
    wait "$p" 2>/dev/null || true
  done
  HOST_PIDS=()
}

# ---------------------------------------------------------------- per scenario
# host_policy SCENARIO: the gateway's site policy, as the guest reads it from /etc/otpatch/policy.toml.
host_policy() {
  # The A/B scenarios of the image observe for 30 s: the guest's harness must see the observation on the new
  # slot (and break the PLC during it) after the boot, which takes seconds under TCG.
  local observation=5s
  [[ $1 != image-ab-* && $1 != image-months ]] || observation=30s
  cat <<EOF
# Made by hil/host.sh for scenario $1.
[gateway]
id = "hil-gw"
compatible = "$HOST_COMPATIBLE"

[server]
url = "https://10.0.2.2:$HOST_HTTPS_PORT/$1/"
ca = "/etc/otpatch/server-ca.pem"
client_cert = "/etc/otpatch/client.pem"
client_key = "/etc/otpatch/client.key"

[trust]
anchors = ["/etc/otpatch/signing-root.pem"]

[segmentation]
backend = "nftables"

# The probe's flow, by address and port: its connection may predate the window's ruleset.
[segmentation.allow.plc]
address = "10.0.2.2"
port = $HOST_PLC_PORT

[rollback]
observation = "$observation"

[probe.hil-temp]
tcp = "10.0.2.2:$HOST_PLC_PORT"
address = 0
min = 10
max = 90
interval = "500ms"
trip_after = 2
EOF
  case $1 in
    image-ab-* | image-months)
      cat <<EOF

# The image's slots: the window may reboot the gateway into the updated slot (logind), inside the window.
[ab]
reboot = "in-window"
reboot_timeout = "3m"
EOF
      ;;
    otpatchd-criu | otpatchd-criu-bad)
      # The guest's own PLC is a critical process (found by its executable; the bad cases point the
      # pidfile at one process or another), probed over the guest's loopback.
      local selector='exe = "/usr/bin/otpatch-plcsim"'
      [[ $1 == otpatchd-criu ]] || selector='pidfile = "/run/plc.pid"'
      cat <<EOF

[process.plc]
$selector

[probe.guest-plc]
tcp = "127.0.0.1:1502"
address = 0
min = 10
max = 90
interval = "500ms"
trip_after = 4
EOF
      ;;
  esac
}

# host_initrd SCENARIO OUT: the guest's initramfs followed by this scenario's files.
host_initrd() {
  local o="$HOST_DIR/overlay/$1"
  rm -rf "$o"
  mkdir -p "$o/etc/otpatch" "$o/hil"
  host_policy "$1" >"$o/etc/otpatch/policy.toml"
  cp "$HOST_DIR/pki/server-ca.pem" "$HOST_DIR/pki/client.pem" "$HOST_DIR/pki/signing-root.pem" "$o/etc/otpatch/"
  install -m 0600 "$HOST_DIR/pki/client.key" "$o/etc/otpatch/client.key"
  # The host's clock when the guest was made: the guest checks its own clock against it (certificates).
  printf 'HOST_EPOCH=%s\n' "$(date +%s)" >"$o/hil/host.env"
  (cd "$o" && find . | LC_ALL=C sort | "$B/pkgs/bin/busybox" cpio -o -H newc -R 0:0 2>/dev/null) >"$o.cpio"
  cat "$B/initramfs.cpio" "$o.cpio" >"$2"
}

# host_disk FILE: a fresh ext4 image for /var/lib/otpatch (the state that must survive a reboot).
host_disk() {
  rm -f "$1"
  truncate -s 64M "$1"
  mkfs.ext4 -q -F -L otpatch-state "$1" || host_die "mkfs.ext4 $1 failed"
}
