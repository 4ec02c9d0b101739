# Sourced by scripts: one target dir outside the clone, shared by CI and developers, so the
# 14-minute RocksDB C++ build happens once per machine (see docs/development.md).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ldr-target}"
