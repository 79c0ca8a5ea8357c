#!/usr/bin/env bash
# Fuzzing, a command of its own (not in the default run):
#   tests/fuzz/run.sh [SECONDS]     each libFuzzer target for SECONDS (default 60)
# Builds build-fuzz/ with clang, ASan and -Dfuzz=true; corpora grow in build-fuzz/corpus/,
# seeded from tests/fuzz/seeds/; crashes are kept in build-fuzz/crashes/. Ends with one
# line per target: its execs and whether it found something.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${1:-60}"
build=build-fuzz
if [ ! -d "$build" ]; then
	CC=clang meson setup "$build" -Dfuzz=true -Db_sanitize=address -Db_lundef=false \
		-Dbuildtype=debugoptimized >/dev/null
fi
ninja -C "$build" tests/fuzz/fuzz-spec tests/fuzz/fuzz-config tests/fuzz/fuzz-response \
	tests/fuzz/fuzz-agent >/dev/null
status=0
summary=()
for t in spec config response agent; do
	corpus="$build/corpus/$t"
	crashes="$build/crashes/$t"
	mkdir -p "$corpus" "$crashes"
	seeds=()
	[ -d "tests/fuzz/seeds/$t" ] && seeds=("tests/fuzz/seeds/$t")
	log="$build/fuzz-$t.log"
	rc=0
	ASAN_OPTIONS=detect_leaks=1 "$build/tests/fuzz/fuzz-$t" -max_total_time="$secs" \
		-max_len=65536 -rss_limit_mb=1024 -artifact_prefix="$crashes/" \
		-print_final_stats=1 "$corpus" "${seeds[@]}" >"$log" 2>&1 || rc=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	if [ "$rc" -ne 0 ]; then
		status=1
		summary+=("fuzz-$t: ${execs:-?} execs, FAILED (exit $rc): see $log and $crashes")
	else
		summary+=("fuzz-$t: ${execs:-?} execs in ${secs} s, nothing found")
	fi
done
printf '%s\n' "${summary[@]}"
exit "$status"
