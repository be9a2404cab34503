#!/usr/bin/env bash
# shellcheck disable=SC2034 # variables set here are read by the sourced init script
# Checks files/mcrelay.init off the router: runs its start_service against
# stand-ins for OpenWrt's UCI and procd shell functions, then
#  1. every flag `mcrelay serve --help` lists (bar --config and --print-config,
#     which UCI replaces) must come out of a config that sets every option (so
#     a new serve flag without a UCI option fails here);
#  2. the relay must start with the command line a loopback config yields,
#     as user mcrelay, with an admin token made on first start (and kept);
#  3. without the mcrelay user no instance starts (never as root).
# Usage: contrib/openwrt/check-init.sh [path/to/mcrelay]   (default: target/release/mcrelay)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../../target/release/mcrelay}"
[ -x "$bin" ] || { echo "no mcrelay binary at $bin (build it or pass its path)" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Stand-ins, just enough of /lib/functions.sh, network.sh and procd.sh.
declare -A UCI SECTION_TYPE
SECTIONS=()
config_load() {
	local name="" kind key value
	UCI=() SECTION_TYPE=() SECTIONS=()
	while read -r kind key value; do
		value="${value#\'}" value="${value%\'}"
		key="${key#\'}" key="${key%\'}"
		case "$kind" in
		config) name="$value" SECTIONS+=("$name") SECTION_TYPE[$name]="$key" ;;
		option) UCI[$name.$key]="$value" ;;
		list) UCI[$name.$key]+="${UCI[$name.$key]:+$'\n'}$value" ;;
		esac
	done < <(grep -v '^[[:space:]]*#' "$UCI_FILE")
}
config_get() { local -n out="$1"; out="${UCI[$2.$3]-${4-}}"; }
config_get_bool() {
	local v; config_get v "$2" "$3" "${4-}"
	case "$v" in 1|on|true|yes|enabled) v=1 ;; 0|off|false|no|disabled) v=0 ;; esac
	local -n out="$1"; out="$v"
}
config_list_foreach() {
	local item
	[ -n "${UCI[$1.$2]-}" ] || return 0
	while IFS= read -r item; do "$3" "$item"; done <<< "${UCI[$1.$2]}"
}
config_foreach() {
	local s
	for s in "${SECTIONS[@]}"; do [ "${SECTION_TYPE[$s]}" = "$2" ] && "$1" "$s"; done
	return 0
}
network_get_ipaddr() { case "$2" in lan) local -n out="$1"; out=127.0.0.1 ;; *) return 1 ;; esac; }
procd_open_instance() { CMD=(); RUN_AS=root; }
procd_set_param() {
	case "$1" in
	command) shift; CMD=("$@") ;;
	user) RUN_AS="$2" ;;
	esac
	return 0
}
procd_append_param() { [ "$1" = command ] && { shift; CMD+=("$@"); }; return 0; }
procd_close_instance() {
	printf '%q ' "${CMD[@]}" >> "$work/commands"; echo >> "$work/commands"
	echo "$RUN_AS" >> "$work/users"
}
logger() { echo "logger: $*" >> "$work/log"; }
mkdir() { :; }
chmod() { :; }
chown() { :; }

# shellcheck source=files/mcrelay.init disable=SC1091
. "$here/files/mcrelay.init"
PROG="$bin"
NETWORK_FUNCTIONS=/dev/null # network_get_ipaddr is the stand-in above
KEY_DIR="$work/etc-mcrelay"
command mkdir -m 0700 "$KEY_DIR"
PASSWD="$work/passwd"
echo 'mcrelay:x:5007:5007:mcrelay:/var/run/mcrelay:/bin/false' > "$PASSWD"

run_init() {
	UCI_FILE="$1"
	: > "$work/commands"
	: > "$work/users"
	: > "$work/log"
	# Init scripts run without errexit or pipefail (plain /bin/sh):
	# `[ -n "$x" ] && ...` may end a function.
	set +e +o pipefail
	start_service
	set -e -o pipefail
}

# 1. Every option set: every serve flag must appear.
cat > "$work/full" <<'UCI'
config mcrelay 'full'
	option group '239.255.0.78'
	option port '5009'
	list iface 'lan'
	list iface '10.0.0.1'
	option recv_buffer '262144'
	option max_datagram '1200'
	option key_file '/tmp/full.pem'
	option rsa_bits '3072'
	option token_file '/tmp/token'
	option clients_file '/tmp/clients'
	option client_timeout '60'
	option max_clients '1024'
	option max_clients_per_ip '64'
	option handshake_rate '5'
	option handshake_burst '10'
	option rsa_rate '200'
	option reassembly_partials '8'
	option reassembly_client_bytes '262144'
	option reassembly_total_bytes '8388608'
	option reassembly_message_bytes '65536'
	option reassembly_age '10'
	option admin '0'
	option admin_bind '127.0.0.1'
	option admin_port '5008'
	option admin_max_sessions '4'
	option admin_token_file '/tmp/admin-token'
	option admin_insecure '1'
	option group_mode '0'
	option downlink '239.255.0.78:5011'
	option ttl '1'
	option log_level 'info'
	option log_ring '1024'
	list federate 'nats://127.0.0.1:4222'
	list federate 'nats://10.0.0.2:4222'
	option federation_key_file '/tmp/federation.key'
	option relay_name 'office'
	option federation_subject 'mcrelay.test'
	option announce_period '5'
	option nats_user 'relay'
	option nats_password_file '/tmp/nats-pass'
	option nats_token_file '/tmp/nats-token'

config mcrelay 'off'
	option enabled '0'

config mcrelay 'waiting'
	list iface 'wan'
UCI
run_init "$work/full"
[ "$(wc -l < "$work/commands")" = 1 ] || { echo "FAIL: expected one instance (disabled and waiting ones skipped):"; cat "$work/commands"; exit 1; }
grep -q "network 'wan' has no IPv4 address" "$work/log" || { echo "FAIL: no log line for the waiting instance"; exit 1; }
cmd="$(cat "$work/commands")"
missing=0
for flag in $("$bin" serve --help | grep -o '^ *--[a-z-]*' | tr -d ' '); do
	# UCI is this package's config file: the TOML one has no place here.
	case "$flag" in --config|--print-config) continue ;; esac
	case " $cmd" in
	*" $flag "*) ;;
	*) echo "FAIL: no UCI option yields $flag"; missing=1 ;;
	esac
done
[ "$missing" = 0 ] || exit 1
case "$cmd" in *"--iface 127.0.0.1 --iface 10.0.0.1 "*) ;; *) echo "FAIL: ifaces not resolved: $cmd"; exit 1 ;; esac
[ "$(cat "$work/users")" = mcrelay ] || { echo "FAIL: the instance does not run as mcrelay: $(cat "$work/users")"; exit 1; }
echo "ok: every 'mcrelay serve' flag has a UCI option"

# 2. A loopback instance: the relay must accept the command line and start.
cat > "$work/loop" <<UCI
config mcrelay 'main'
	option port '0'
	list iface 'lan'
	option admin_port '0'
	option key_file '$work/key/main.pem'
	option client_timeout '30'
	option log_level 'info'
UCI
run_init "$work/loop"
command mkdir -m 0700 "$work/key"
token="$KEY_DIR/main.admin-token"
[ "$(cat "$work/users")" = mcrelay ] || { echo "FAIL: the instance does not run as mcrelay"; exit 1; }
case "$(cat "$work/commands")" in *"--admin-token-file $token "*) ;; *) echo "FAIL: no admin token: $(cat "$work/commands")"; exit 1 ;; esac
[ "$(stat -c %a "$token")" = 600 ] || { echo "FAIL: admin token mode $(stat -c %a "$token")"; exit 1; }
[ "$(tr -dc 'A-Za-z0-9' < "$token" | wc -c)" = 32 ] && [ "$(wc -c < "$token")" = 32 ] || { echo "FAIL: admin token is not 32 characters: $(wc -c < "$token")"; exit 1; }
first="$(cat "$token")"
run_init "$work/loop"
[ "$(cat "$token")" = "$first" ] || { echo "FAIL: the admin token changed on the second start"; exit 1; }
eval "set -- $(cat "$work/commands")"
"$@" 2> "$work/relay.log" &
pid=$!
for _ in $(seq 100); do
	grep -q "listening on udp" "$work/relay.log" && break
	kill -0 "$pid" 2>/dev/null || break
	sleep 0.1
done
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
grep -q "listening on udp" "$work/relay.log" || { echo "FAIL: the relay did not start with: $*"; cat "$work/relay.log"; exit 1; }
[ -f "$work/key/main.pem" ] || { echo "FAIL: no key file created"; exit 1; }
echo "ok: the relay starts with the command line the init script builds"

# 3. No mcrelay user: refuse, rather than run the relay as root.
PASSWD="$work/passwd-without-mcrelay"
echo 'root:x:0:0:root:/root:/bin/ash' > "$PASSWD"
run_init "$work/loop"
[ ! -s "$work/commands" ] || { echo "FAIL: an instance started without the mcrelay user:"; cat "$work/commands"; exit 1; }
grep -q "user 'mcrelay' is missing" "$work/log" || { echo "FAIL: no log line for the missing user"; cat "$work/log"; exit 1; }
echo "ok: no instance runs as root when the mcrelay user is missing"
