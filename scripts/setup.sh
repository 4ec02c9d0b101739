# Sourced by scripts/test, scripts/demo and scripts/bench: installs what a fresh Debian machine
# lacks (clang/libclang for RocksDB's bindgen; PostgreSQL, the benchmark peer; psycopg 3 for the
# driver tests, checked with the system interpreter the package installs into; chromium, the
# headless browser of the DB Console test) and points cargo
# at the shared target directory.
if ! command -v clang >/dev/null 2>&1 || ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 \
    || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1 \
    || ! /usr/bin/python3 -c 'import psycopg' >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing build and test dependencies (clang, libclang-dev, postgresql, python3-psycopg, chromium) ..." >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libclang-dev postgresql postgresql-client python3-psycopg chromium >/dev/null
    else
        echo "missing clang/libclang-dev, postgresql, python3-psycopg or chromium: install them (as root: apt-get install clang libclang-dev postgresql postgresql-client python3-psycopg chromium)" >&2
        exit 1
    fi
fi
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
