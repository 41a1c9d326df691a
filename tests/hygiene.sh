#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# hygiene.sh — scaffolding that turns breakage into silence must not come
# back: weak symbols (a missing definition links to a fallback instead of
# failing), CMake existence guards that drop targets when a file goes missing,
# tracker letters ("issue E") that point at nothing in the repository, and
# files without their license tag.
#   tests/hygiene.sh [REPO_ROOT]      exit 0 clean, 1 with one line per finding
set -u
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root" || exit 2
fail=0
report() { echo "hygiene: $1"; sed 's/^/  /'; fail=1; }
src=(runtime kernels comm daemon include tests)
out=$(grep -rnE '__attribute__\(\(\s*weak|#\s*pragma\s+weak' "${src[@]}" --include='*.c' --include='*.h' --include='*.cu' --include='*.cuh' 2>/dev/null)
[ -n "$out" ] && report "weak symbols:" <<<"$out"
out=$(grep -rnE 'if\s*\(\s*(NOT\s+)?EXISTS' CMakeLists.txt cmake "${src[@]}" --include='*.cmake' --include='CMakeLists.txt' 2>/dev/null)
[ -n "$out" ] && report "existence guards in CMake (a missing file must be a configure error):" <<<"$out"
out=$(grep -rnIE '\b[Ii]ssues? [A-Z]\b|\b[Ii]ssues [A-Z] and [A-Z]\b' "${src[@]}" docs deploy README.md BENCHMARKS.md CMakeLists.txt cmake 2>/dev/null | grep -v 'tests/hygiene.sh')
[ -n "$out" ] && report "tracker letters (name the thing, not a letter):" <<<"$out"
# Every source, script and build file carries the project's license tag
# (LICENSE: Apache-2.0) in its first lines.
out=$(git ls-files -- "${src[@]}" deploy cmake CMakeLists.txt .ci python examples 2>/dev/null |
  grep -E '\.(c|h|cu|cuh|cpp|sh|py|cmake|sbatch|yaml|service|conf|env|in)$|CMakeLists\.txt$|Containerfile$' |
  grep -v '^tests/data/\|^tests/fuzz/corpus/' |
  while read -r f; do head -n 3 "$f" | grep -q 'SPDX-License-Identifier: Apache-2.0' || echo "$f"; done)
[ -n "$out" ] && report "files without the SPDX license tag in their first 3 lines:" <<<"$out"
if [ "$fail" = 0 ]; then echo "hygiene: clean"; fi
exit "$fail"
