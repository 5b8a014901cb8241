#!/usr/bin/env bash
# Examples are documentation a user copies into their own project: each must stand alone, on
# the crate's public API and crates the user can name. Checked in two steps:
#  1. no example pulls in code from elsewhere in the tree (`#[path = ...]`, `include!`);
#  2. every example builds from a copy outside the crate: a fresh Cargo project depending on
#     pingora-failover by path and on the crates the crate declares for its examples, with the
#     crate's Cargo.lock and target dir. The copy's features resolve as in the crate's own build
#     of the examples, so it reuses every artifact of that build and compiles the examples alone.
set -euo pipefail

crate=$(cd "$(dirname "$0")/.." && pwd)
manifest="$crate/Cargo.toml"
# The crate's features to turn on, as `make test` builds the examples.
features=${FEATURES:-active-health discovery metrics rustls etcd}

# 1. Nothing included from outside examples/.
if grep -rnE '#\[path|include!\(' "$crate/examples"; then
  echo "examples-standalone: the example(s) above include code from elsewhere" \
    "(#[path] or include!): an example must stand alone" >&2
  exit 1
fi

# The names of [SECTION] of the crate's manifest (dependencies, or features).
keys() {
  awk -v section="[$1]" '
    /^\[/ { inside = ($0 == section); next }
    inside && $2 == "=" && $1 ~ /^[A-Za-z0-9_-]+$/ { print $1 }
  ' "$manifest"
}

# The line `NAME = ...` of [SECTION], as a non-optional dependency.
spec() {
  awk -v section="[$1]" -v name="$2" '
    /^\[/ { inside = ($0 == section); next }
    inside && $1 == name && $2 == "=" { sub(/, *optional *= *true/, ""); print; exit }
  ' "$manifest"
}

# Every dev-dependency, as the crate declares it (the same feature resolution as the crate's own
# build of the examples), and each of the crate's [dependencies] an example names (`arc_swap::`).
# A crate declared nowhere fails the build.
deps=""
for name in $(keys dev-dependencies); do
  deps+="$(spec dev-dependencies "$name")"$'\n'
done
for name in $(keys dependencies); do
  if [ -z "$(spec dev-dependencies "$name")" ] \
     && grep -rqE "(^|[^:[:alnum:]_])${name//-/_}::" "$crate/examples"; then
    deps+="$(spec dependencies "$name")"$'\n'
  fi
done
# The crate's features, passed through: `#[cfg(feature = "metrics")]` in an example means the
# same in the copy.
passthrough=""
for f in $(keys features); do
  [ "$f" = default ] || passthrough+="$f = [\"pingora-failover/$f\"]"$'\n'
done
edition=$(awk '$1 == "edition" { gsub(/"/, "", $3); print $3; exit }' "$manifest")

# 2. Every example, built from a copy outside the crate's tree.
copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
mkdir "$copy/src"
cat > "$copy/Cargo.toml" <<TOML
[package]
name = "examples-standalone"
version = "0.0.0"
edition = "$edition"
publish = false

[features]
$passthrough
[dependencies]
pingora-failover = { path = "$crate" }
$deps
[workspace]
TOML
# The crate's profiles too (a profile is the root package's alone): the same build settings, so
# the same artifacts.
awk '/^\[/ { inside = ($0 ~ /^\[profile\./) } inside' "$manifest" >> "$copy/Cargo.toml"
# Modification times are kept (and the empty library's is fixed): an example unchanged since
# the last run is not built again.
echo "//! Only the examples are built." > "$copy/src/lib.rs"
touch -t 200001010000 "$copy/src/lib.rs"
cp "$crate/Cargo.lock" "$copy/"
cp -Rp "$crate/examples" "$copy/examples"

cd "$copy"
# The crate's target dir: what the crate's builds and earlier runs compiled is reused.
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$crate/target} \
  ${CARGO:-cargo} build --offline --examples --features "$features"
echo "examples-standalone: every example builds from a copy outside the crate"
