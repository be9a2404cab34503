#!/usr/bin/env bash
# The test command: checks (and, as root with apt-get, installs) what the
# integration tests drive besides Rust, then runs `cargo test` with any
# arguments given. A missing piece stops it at once with one line.
set -euo pipefail
cd "$(dirname "$0")"

export PATH="$HOME/.cargo/bin:$PATH"

need_root_to_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1
}

# What each test group needs, as "check|Debian package".
#   python3 + cryptography: the Python interop client (tests/interop*.rs)
#   ip: network namespaces (tests/multi_iface.rs, tests/ipv6.rs)
#   faketime: wall clocks that lie (tests/clocks.rs)
#   nc -N: the admin channel driven as a person would (tests/admin.rs)
#   nats-server: federation (tests/federation*.rs)
missing() {
  local m=""
  command -v python3 >/dev/null 2>&1 || m="$m python3"
  python3 -c 'import cryptography' 2>/dev/null || m="$m python3-cryptography"
  command -v ip >/dev/null 2>&1 || m="$m iproute2"
  command -v faketime >/dev/null 2>&1 || m="$m faketime"
  case "$(nc -h 2>&1 || true)" in *-N[[:space:]]*) ;; *) m="$m netcat-openbsd" ;; esac
  command -v nats-server >/dev/null 2>&1 || m="$m nats-server"
  echo "$m"
}

if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo not found: install Rust (https://rustup.rs) or run .ci/run as root" >&2
  exit 1
fi

lacking="$(missing)"
if [ -n "$lacking" ] && need_root_to_install; then
  echo "== installing$lacking"
  apt-get update -qq
  # One at a time: a package the distribution lacks must not hold up the rest.
  for p in $lacking; do apt-get install -y -qq "$p" >/dev/null || true; done
  # Old distributions package `cryptography` for pip only.
  python3 -c 'import cryptography' 2>/dev/null \
    || python3 -m pip install -q cryptography 2>/dev/null \
    || python3 -m pip install -q --break-system-packages cryptography 2>/dev/null || true
  lacking="$(missing)"
fi
if [ -n "$lacking" ]; then
  echo "test.sh: missing:$lacking (as root: apt-get install$lacking)" >&2
  exit 1
fi

exec cargo test "$@"
