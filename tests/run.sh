#!/usr/bin/env bash
# Runs the whole test suite: installs what it needs, builds, runs the unit programs and
# the integration tests (real agents, a real FUSE mount) with one runner.
#   tests/run.sh           the suite on a normal build (build/)
#   tests/run.sh --asan    the same on an ASan/UBSan build (build-asan/)
#   CLUSTERFS_VALGRIND=1 tests/run.sh -k 'test_nodes or test_tasks'
#                          the daemon under valgrind memcheck (slow; pick the suites)
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
build=build
setup=(-Dwerror=true) # CI builds warning-free
if [ "${1:-}" = "--asan" ]; then
	build=build-asan
	setup+=(-Db_sanitize=address,undefined -Db_lundef=false)
	export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=99
	export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=99
	shift
fi
[ -d "$build" ] || meson setup "$build" "${setup[@]}" >/dev/null
ninja -C "$build" >/dev/null
[ -e /dev/fuse ] || { echo "tests/run.sh: no /dev/fuse on this machine: the suite needs FUSE" >&2; exit 1; }
export CLUSTERFS_BUILD="$PWD/$build"
exec /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration "$@"
