#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# lint_shell.sh SOURCE_DIR — runs shellcheck (default severity: style and up)
# on every shell script of the repository: *.sh, *.sbatch and files whose
# first line names bash or sh. Exit 77 when shellcheck is not installed
# (apt-get install shellcheck).
set -u
cd "$1" || exit 1
command -v shellcheck >/dev/null || { echo "SKIP: shellcheck not installed"; exit 77; }
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files --cached --others --exclude-standard)
else
  mapfile -t files < <(find . -type f -not -path './build*' -not -path './.git/*' | sed 's|^\./||')
fi
scripts=()
for f in "${files[@]}"; do
  [ -f "$f" ] || continue
  case "$f" in
    *.sh|*.sbatch) scripts+=("$f") ;;
    *.*) ;;
    *) head -n1 "$f" 2>/dev/null | grep -qE '^#!.*\b(ba)?sh\b' && scripts+=("$f") ;;
  esac
done
[ "${#scripts[@]}" -gt 0 ] || { echo "FAIL: no shell scripts found"; exit 1; }
echo "shellcheck $(shellcheck --version | sed -n 's/^version: //p') on ${#scripts[@]} scripts"
shellcheck "${scripts[@]}" || { echo "FAIL: shellcheck"; exit 1; }
printf '  %s\n' "${scripts[@]}"
echo PASS
