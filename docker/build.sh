#!/usr/bin/env bash
# Builds the two images compose runs, FROM scratch around statically linked release binaries
# (no image registry is needed). Run it before `docker compose -p ringproxy -f docker/compose.yaml up`.
# Binaries land in docker/bin/ (ignored by git); compose's build copies them from there.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
# A target dir of its own: this may run while another cargo command holds target/.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_STATIC:-target/static}"
# Stripped for the images: the debug info the release profile keeps for profiling is 1 MB+.
CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet --workspace --target "$target"
mkdir -p docker/bin
for bin in ringproxy target-svc; do
  install -m 0755 "$CARGO_TARGET_DIR/$target/release/$bin" docker/bin/
done
echo "docker/build.sh: static binaries in docker/bin/: $(du -h docker/bin/* | awk '{print $2 " " $1}' | tr '\n' ' ')"
