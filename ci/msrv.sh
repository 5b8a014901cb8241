#!/usr/bin/env bash
# The library builds with its declared MSRV (`rust-version` in Cargo.toml). Resolves its own
# lockfile in a copy, preferring dependency versions that support that rustc (as `cargo publish`
# users with that toolchain get), and checks the library with the features docs.rs builds.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
msrv="$(sed -n 's/^rust-version = "\(.*\)"/\1/p' "$root/Cargo.toml")"
features="${FEATURES:-active-health discovery metrics rustls etcd}"
if ! rustup run "$msrv" rustc --version >/dev/null 2>&1; then
  echo "installing rust $msrv for the MSRV check"
  rustup toolchain install "$msrv" --profile minimal
fi
copy="$(mktemp -d)"
trap 'rm -rf "$copy"' EXIT
cp -r "$root/Cargo.toml" "$root/README.md" "$root/src" "$copy/"
mkdir -p "$copy/examples" "$copy/benches" "$copy/tests"
# Targets named in the manifest must exist; the check builds the library only.
for t in $(sed -n 's/^name = "\(.*\)"/\1/p' "$root/Cargo.toml" | tail -n +2); do
  touch "$copy/benches/$t.rs" "$copy/examples/$t.rs"
done
cd "$copy"
CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback cargo "+$msrv" generate-lockfile -q
CARGO_TARGET_DIR="$root/target/msrv" cargo "+$msrv" check -q --lib --features "$features"
echo "MSRV $msrv: the library builds"
