#!/usr/bin/env bash
# Builds the Debian package: target/debian/lbd_<version>-1_<arch>.deb.
#
#   scripts/package.sh          # prints the .deb's path on its last line
#
# Installs cargo-deb (`cargo install cargo-deb --locked`) only if it is
# missing. Reuses the release build: `cargo build --release` once, then the
# man page and completions from the binary itself (`lbd --gen-assets`), then
# `cargo deb --no-build --strip` (the release profile keeps line tables for
# backtraces; the package does not). What goes where: Cargo.toml
# [package.metadata.deb].
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "==> installing cargo-deb"
    cargo install cargo-deb --locked
fi

echo "==> release build"
cargo build --release --locked --bin lbd

echo "==> man page and shell completions"
rm -rf target/assets
target/release/lbd --gen-assets target/assets
gzip -9n target/assets/lbd.1

echo "==> cargo deb"
cargo deb --no-build --locked --strip
