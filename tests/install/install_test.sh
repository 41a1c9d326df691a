#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# install_test.sh — `cmake --install` gives an operator and an engine author
# what docs/DEPLOY.md promises. Installs the build into a temporary prefix and:
#   1. checks the installed files (programs, libepmoe_client.so with its
#      SONAME link, the static runtime archives, every public header, the .pc
#      files, the CMake package, the license, the recipes), and that every
#      /opt/epmoe path the manifests and the unit name is one of them;
#   2. runs the installed programs (--help) and checks none of their
#      libraries is missing;
#   3. compiles every installed header on its own (client headers with the
#      client's flags only);
#   4. builds a tiny client with pkg-config epmoe-client and runs it (connect
#      to a missing socket: a clean error naming the path), and a one-rank
#      MoE step program with pkg-config epmoe, checked against the reference;
#   5. the same two programs through find_package(epmoe) (epmoe::client,
#      epmoe::runtime), and find_package(epmoe COMPONENTS client) with MPI
#      lookups disabled;
#   6. moves the prefix and builds the client again (relocatable .pc).
#   install_test.sh SOURCE_DIR BUILD_DIR VERSION [EXTRA_C_FLAGS]
# EXTRA_C_FLAGS: flags the build used that consumers must use too (sanitizers).
set -u
SRC=$1 B=$2 VERSION=$3 XFLAGS=${4:-}
T=$(mktemp -d /tmp/epmoe-install.XXXXXX)
trap 'rm -rf "$T"' EXIT
P=$T/prefix
fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok: $*"; }
CC=${CC:-cc}
read -r -a xf <<<"$XFLAGS"

cmake --install "$B" --prefix "$P" >"$T/install.log" 2>&1 || { cat "$T/install.log"; fail "cmake --install"; }
ok "cmake --install: $(grep -c 'Installing:' "$T/install.log") files into $P"

# 1. files -----------------------------------------------------------------------
pcdir=$(dirname "$(find "$P" -name epmoe-client.pc -print -quit)")
[ -d "$pcdir" ] || fail "no epmoe-client.pc under $P"
L=$(dirname "$pcdir")
maj_min=${VERSION%.*}
for f in bin/epmoed bin/epmoectl; do [ -x "$P/$f" ] || fail "$f missing or not executable"; done
real="$L/libepmoe_client.so.$VERSION"
[ -f "$real" ] || fail "no $real"
[ "$(readlink "$L/libepmoe_client.so.$maj_min")" = "libepmoe_client.so.$VERSION" ] || fail "no SONAME link libepmoe_client.so.$maj_min"
[ -L "$L/libepmoe_client.so" ] || fail "no development link libepmoe_client.so"
soname=$(readelf -d "$real" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = "libepmoe_client.so.$maj_min" ] || fail "SONAME '$soname', expected libepmoe_client.so.$maj_min"
for part in runtime comm kernels base; do [ -f "$L/libepmoe_$part.a" ] || fail "no libepmoe_$part.a"; done
for h in "$SRC"/include/epmoe/*.h; do
  cmp -s "$h" "$P/include/epmoe/$(basename "$h")" || fail "header $(basename "$h") not installed (or differs)"
done
for f in "$pcdir/epmoe.pc" "$L/cmake/epmoe/epmoeConfig.cmake" "$L/cmake/epmoe/epmoeConfigVersion.cmake" \
  "$L/cmake/epmoe/epmoeClientTargets.cmake" "$L/cmake/epmoe/epmoeRuntimeTargets.cmake" \
  "$P/share/doc/epmoe/LICENSE" "$P/share/epmoe/deploy/slurm/epmoed.sbatch" \
  "$P/share/epmoe/deploy/systemd/epmoe@.service" "$P/share/epmoe/deploy/k8s/mpijob.yaml"; do
  [ -f "$f" ] || fail "missing ${f#"$P"/}"
done
grep -q 'Apache License' "$P/share/doc/epmoe/LICENSE" || fail "LICENSE is not the Apache license"
# The manifests, the unit and the image use /opt/epmoe as the prefix: every
# file they name under it must be one that is installed.
mapfile -t used < <(grep -ohE '/opt/epmoe/[A-Za-z0-9_./@-]*[A-Za-z0-9_]' "$SRC"/deploy/k8s/* "$SRC"/deploy/systemd/* | sort -u)
[ "${#used[@]}" -gt 0 ] || fail "no /opt/epmoe paths found in deploy/ (self-check)"
for u in "${used[@]}"; do [ -e "$P/${u#/opt/epmoe/}" ] || fail "deploy/ uses $u, which the install does not provide"; done
ok "programs, libepmoe_client.so.$VERSION (SONAME $soname), 4 archives, $(find "$P/include/epmoe" -name '*.h' | wc -l) headers, .pc, CMake package, LICENSE, recipes"
ok "the ${#used[@]} /opt/epmoe paths of deploy/k8s and deploy/systemd are installed files: ${used[*]}"

# 2. installed programs run -------------------------------------------------------
for p in epmoed epmoectl epmoe_client; do
  f=$P/bin/$p
  [ "$p" = epmoe_client ] && f=$real
  missing=$(ldd "$f" 2>&1 | grep 'not found')
  [ -z "$missing" ] || fail "$p: libraries not found: $missing"
done
"$P/bin/epmoed" --help >"$T/help" 2>&1 || fail "installed epmoed --help exited $?"
grep -q 'usage:' "$T/help" || fail "epmoed --help printed no usage"
"$P/bin/epmoectl" --help >"$T/help" 2>&1 || fail "installed epmoectl --help exited $?"
ok "installed epmoed/epmoectl start (--help), no missing libraries"

# 3. headers compile alone ----------------------------------------------------------
export PKG_CONFIG_PATH=$pcdir
pkg-config --exists epmoe epmoe-client || fail "pkg-config does not find epmoe / epmoe-client in $pcdir"
[ "$(pkg-config --modversion epmoe-client)" = "$VERSION" ] || fail "epmoe-client.pc version $(pkg-config --modversion epmoe-client)"
read -r -a cl_cflags <<<"$(pkg-config --cflags epmoe-client)"
read -r -a rt_cflags <<<"$(pkg-config --cflags epmoe)"
for h in "$P"/include/epmoe/*.h; do
  printf '#include <epmoe/%s>\n' "$(basename "$h")" |
    "$CC" -std=c11 -Wall -Wextra -Werror -fsyntax-only -x c - "${rt_cflags[@]}" 2>"$T/h.err" ||
    { cat "$T/h.err"; fail "installed header $(basename "$h") does not compile on its own"; }
done
for h in client.h protocol.h status.h; do
  printf '#include <epmoe/%s>\n' "$h" | "$CC" -std=c11 -Wall -Werror -fsyntax-only -x c - "${cl_cflags[@]}" ||
    fail "$h needs more than epmoe-client's flags"
done
printf '#include <epmoe/client.h>\nint main(void){return 0;}\n' | c++ -x c++ -fsyntax-only - "${cl_cflags[@]}" ||
  fail "client.h does not compile as C++"
ok "every installed header compiles alone; client headers with epmoe-client flags only, also as C++"

# 4. pkg-config consumers -----------------------------------------------------------
C=$SRC/tests/install/consumer
read -r -a cl_libs <<<"$(pkg-config --libs epmoe-client)"
"$CC" -std=c11 "${xf[@]}" "$C/client_app.c" "${cl_cflags[@]}" "${cl_libs[@]}" -Wl,-rpath,"$L" -o "$T/client_pc" ||
  fail "building client_app with pkg-config epmoe-client"
ldd "$T/client_pc" | grep -q "$L/libepmoe_client.so.$maj_min" || fail "client_app does not load the installed .so"
"$T/client_pc" || fail "client_app (pkg-config) did not fail cleanly"
read -r -a rt_libs <<<"$(pkg-config --libs epmoe)"
"$CC" -std=c11 "${xf[@]}" "$C/runtime_app.c" "${rt_cflags[@]}" "${rt_libs[@]}" -o "$T/runtime_pc" ||
  fail "building runtime_app with pkg-config epmoe"
"$T/runtime_pc" || fail "runtime_app (pkg-config) failed"
ok "pkg-config: client_app and runtime_app build and pass"

# 5. find_package --------------------------------------------------------------------
cm=(-DCMAKE_PREFIX_PATH="$P" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_FLAGS="$XFLAGS" -DCMAKE_EXE_LINKER_FLAGS="$XFLAGS")
cmake -S "$C" -B "$T/cm" "${cm[@]}" >"$T/cm.log" 2>&1 || { cat "$T/cm.log"; fail "find_package(epmoe) configure"; }
cmake --build "$T/cm" >>"$T/cm.log" 2>&1 || { cat "$T/cm.log"; fail "find_package(epmoe) build"; }
"$T/cm/client_app" || fail "client_app (find_package) did not fail cleanly"
"$T/cm/runtime_app" || fail "runtime_app (find_package) failed"
cmake -S "$SRC/tests/install/client_only" -B "$T/co" "${cm[@]}" -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON >"$T/co.log" 2>&1 ||
  { cat "$T/co.log"; fail "find_package(epmoe COMPONENTS client) needs more than the client"; }
cmake --build "$T/co" >>"$T/co.log" 2>&1 || { cat "$T/co.log"; fail "client-only build"; }
"$T/co/client_app" || fail "client_app (COMPONENTS client) did not fail cleanly"
if cmake -S "$C" -B "$T/bad" -DCMAKE_PREFIX_PATH="$P" -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON >"$T/bad.log" 2>&1; then
  fail "self-check: epmoe::runtime was found with MPI disabled"
fi
ok "find_package(epmoe): epmoe::client and epmoe::runtime build and pass; COMPONENTS client works without MPI"

# 6. relocated prefix ---------------------------------------------------------------
mv "$P" "$T/moved"
export PKG_CONFIG_PATH=${pcdir/#$P/$T/moved}
read -r -a cl_cflags <<<"$(pkg-config --cflags epmoe-client)"
read -r -a cl_libs <<<"$(pkg-config --libs epmoe-client)"
"$CC" -std=c11 "${xf[@]}" "$C/client_app.c" "${cl_cflags[@]}" "${cl_libs[@]}" -Wl,-rpath,"${L/#$P/$T/moved}" -o "$T/client_moved" ||
  fail "building against the moved prefix"
ldd "$T/client_moved" | grep -q "$T/moved/" || fail "client built against the moved prefix loads another library"
"$T/client_moved" || fail "client_app against the moved prefix"
ok "the prefix still works after being moved (pkg-config paths follow the .pc file)"
echo PASS
