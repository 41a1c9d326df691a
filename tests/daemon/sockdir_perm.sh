#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# sockdir_perm.sh — the socket-directory policy and the client's server check,
# as root with two users this script creates (label fault; exit 77 when not
# root or without useradd). docs/RELIABILITY.md "Socket directory" is the
# policy; every case below is a way the daemon was once fooled or did harm.
#   sockdir_perm.sh MPIEXEC BINDIR PROBE
# Users: A (a member of group G through its supplementary groups) and B (not).
#  1 a shared 1777 parent keeps its mode; the daemon uses its own epmoe-0
#    inside, epmoectl finds it, and it is removed again at exit
#  2 a root-owned 0777 parent (a Kubernetes emptyDir) serves a non-root daemon
#  3 a directory owned by another user is refused, its contents untouched
#  4 a regular file or 5 a symlink at the socket path is refused and left alone
#  6 a fake daemon of user B in a directory B can write: the client refuses it
#    (server uid != directory owner) before sending a byte; --expect-uid B accepts
#  7 --allowed-group G: a member of G (supplementary) connects, a non-member not
#  8 a squatted epmoe-0 of user B inside a shared parent is refused
set -u
MPIEXEC=$1 BIN=$2 PROBE=$3
CTL=$BIN/epmoectl EPMOED=$BIN/epmoed
[ "$(id -u)" = 0 ] || { echo "skip: needs root (creates users)"; exit 77; }
if ! command -v useradd >/dev/null || ! command -v setpriv >/dev/null; then
  echo "skip: no useradd/setpriv"
  exit 77
fi
T=$(mktemp -d /tmp/epmoe-perm.XXXXXX)
chmod 755 "$T"
UA=epmta$$ UB=epmtb$$ G=epmtg$$
MP="" FAKE=""
fail() { echo "FAIL: $*"; echo "--- daemon log (tail)"; tail -20 "$T/log" 2>/dev/null; exit 1; }
ok() { echo "ok: $*"; }
cleanup() {
  [ -n "$MP" ] && kill -KILL "$MP" 2>/dev/null
  [ -n "$FAKE" ] && kill -KILL "$FAKE" 2>/dev/null
  pkill -KILL -u "$UA" 2>/dev/null; pkill -KILL -u "$UB" 2>/dev/null # only the users this script made
  sleep 0.2
  userdel "$UA" 2>/dev/null; userdel "$UB" 2>/dev/null; groupdel "$G" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT
groupadd "$G" || { echo "skip: groupadd failed"; exit 77; }
useradd -M -N -g nogroup -G "$G" -s /bin/sh "$UA" 2>/dev/null || useradd -M -N -G "$G" -s /bin/sh "$UA" ||
  { echo "skip: useradd failed"; exit 77; }
useradd -M -N -s /bin/sh "$UB" 2>/dev/null || useradd -M -s /bin/sh "$UB" || { echo "skip: useradd failed"; exit 77; }
IDA=$(id -u "$UA") IDB=$(id -u "$UB")
mkdir -p "$T/home" && chmod 1777 "$T/home"
# as USER CMD...: with the user's groups (supplementary included) and a home
as() { local u=$1; shift; setpriv --reuid="$u" --regid="$(id -g "$u")" --init-groups env HOME="$T/home" TMPDIR=/tmp "$@"; }
# as_bg: the same for `as_bg ... &`, exec'd so that $! is the program itself
as_bg() { local u=$1; shift; exec setpriv --reuid="$u" --regid="$(id -g "$u")" --init-groups env HOME="$T/home" TMPDIR=/tmp "$@"; }

# start [USER] ARGS...: one daemon in the background; waits for health or its exit
start() {
  local who=root
  if [ "$1" = "-u" ]; then who=$2; shift 2; fi
  if [ "$who" = root ]; then
    $MPIEXEC -np 1 "$EPMOED" --preset tiny --backend cpu --warmup-tokens 1 "$@" >"$T/log" 2>&1 &
  else
    as_bg "$who" "$MPIEXEC" -np 1 "$EPMOED" --preset tiny --backend cpu --warmup-tokens 1 "$@" \
      >"$T/log" 2>&1 &
  fi
  MP=$!
}
# up DIR [USER]: wait until health answers through DIR (as USER); 1 if the daemon exited
up() {
  for _ in $(seq 1 100); do
    if [ -n "${2:-}" ]; then as "$2" "$CTL" health --socket-dir "$1" --quiet >/dev/null 2>&1 && return 0
    else "$CTL" health --socket-dir "$1" --quiet >/dev/null 2>&1 && return 0; fi
    kill -0 "$MP" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}
stop() { # stop DIR [USER]: SHUTDOWN and wait
  if [ -n "${2:-}" ]; then as "$2" "$CTL" shutdown --socket-dir "$1" >/dev/null 2>&1
  else "$CTL" shutdown --socket-dir "$1" >/dev/null 2>&1; fi
  for _ in $(seq 1 50); do kill -0 "$MP" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$MP" 2>/dev/null; wait "$MP" 2>/dev/null; MP=""
}
refused() { # refused WHAT: the daemon must exit non-zero by itself, saying WHAT
  for _ in $(seq 1 100); do kill -0 "$MP" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$MP" 2>/dev/null && fail "the daemon did not refuse to start ($1)"
  wait "$MP"; local rc=$?; MP=""
  [ $rc != 0 ] || fail "the daemon exited 0 instead of refusing ($1)"
  grep -q "$1" "$T/log" || fail "the refusal does not say '$1': $(grep -m1 fatal "$T/log")"
}

# 1
P=$T/shared; mkdir "$P"; chmod 1777 "$P"
start --socket-dir "$P"
up "$P" || fail "daemon in a shared 1777 parent did not come up"
[ "$(stat -c %a "$P")" = 1777 ] || fail "the shared parent's mode changed to $(stat -c %a "$P")"
[ -S "$P/epmoe-0/epmoe.0.sock" ] || fail "no socket in $P/epmoe-0"
[ "$(stat -c %a "$P/epmoe-0")" = 750 ] || fail "own subdirectory mode $(stat -c %a "$P/epmoe-0") != 750"
stop "$P"
[ "$(stat -c %a "$P")" = 1777 ] || fail "the shared parent's mode changed at exit"
[ -e "$P/epmoe-0" ] && fail "the daemon left its subdirectory behind: $(ls -la "$P/epmoe-0")"
ok "1777 parent: kept its mode; the daemon served from its own epmoe-0 (0750) and removed it at exit"

# 2
E=$T/emptydir; mkdir "$E"; chmod 0777 "$E"
start -u "$UA" --socket-dir "$E"
up "$E" "$UA" || fail "non-root daemon in a root-owned 0777 parent did not come up: $(grep -m1 fatal "$T/log")"
[ -S "$E/epmoe-$IDA/epmoe.0.sock" ] || fail "no socket in $E/epmoe-$IDA"
[ "$(stat -c %a "$E")" = 777 ] || fail "the emptyDir's mode changed"
stop "$E" "$UA"
ok "root-owned 0777 parent (emptyDir): a non-root daemon serves from epmoe-$IDA"

# 3
D=$T/bdir; mkdir "$D"; echo keep >"$D/file"; chown "$UB" "$D"; chmod 755 "$D"
start --socket-dir "$D"
refused "belongs to uid $IDB"
{ [ "$(cat "$D/file")" = keep ] && [ "$(stat -c %U:%a "$D")" = "$UB:755" ]; } || fail "the other user's directory was changed"
[ -e "$D/epmoe.0.sock" ] && fail "a socket was created in another user's directory"
ok "a directory owned by uid $IDB: refused, left untouched"

# 4, 5
O=$T/own; mkdir "$O"; chmod 750 "$O"
echo data >"$O/epmoe.0.sock"
start --socket-dir "$O"
refused "exists and is not a socket"
[ "$(cat "$O/epmoe.0.sock")" = data ] || fail "the regular file at the socket path was removed or changed"
rm "$O/epmoe.0.sock"; echo target >"$T/target"; ln -s "$T/target" "$O/epmoe.0.sock"
start --socket-dir "$O"
refused "is a symbolic link"
{ [ -L "$O/epmoe.0.sock" ] && [ "$(cat "$T/target")" = target ]; } || fail "the symlink or its target was touched"
rm "$O/epmoe.0.sock"
ln -s "$O" "$T/dirlink"
start --socket-dir "$T/dirlink"
refused "is a symbolic link"
ok "a regular file or a symlink at the socket path, or a symlinked --socket-dir: refused, left in place"

# 6
V=$T/victim; mkdir "$V"; chmod 1777 "$V" # root's, but anyone may add a socket
rm -f "$T/fake.bytes"; touch "$T/fake.bytes"; chmod 666 "$T/fake.bytes"
as_bg "$UB" "$PROBE" "$V/epmoe.0.sock" fakeserver "$T/fake.bytes" >/dev/null 2>&1 &
FAKE=$!
for _ in $(seq 1 50); do [ -S "$V/epmoe.0.sock" ] && break; sleep 0.1; done
[ -S "$V/epmoe.0.sock" ] || fail "the fake daemon did not start"
out=$("$CTL" health --socket-dir "$V" 2>&1) && fail "health through a fake daemon of uid $IDB said ok: $out"
echo "$out" | grep -q "served by uid $IDB" || fail "the refusal does not name the fake's uid: $out"
out=$("$CTL" forward --socket-dir "$V" --tokens-per-rank 1 2>&1) && fail "forward through the fake succeeded: $out"
[ -s "$T/fake.bytes" ] && fail "the client sent frames to the fake before checking it: $(cat "$T/fake.bytes")"
"$CTL" health --socket-dir "$V" --expect-uid "$IDB" >/dev/null 2>&1 || fail "--expect-uid $IDB refused its own server"
kill -KILL "$FAKE" 2>/dev/null; wait "$FAKE" 2>/dev/null; FAKE=""
ok "a fake daemon of uid $IDB in root's 1777 directory: health and forward refused before a byte was sent; --expect-uid $IDB accepts it"

# 7
A=$T/grp
start --socket-dir "$A" --allowed-group "$G"
up "$A" || fail "daemon with --allowed-group did not come up: $(grep -m1 fatal "$T/log")"
[ "$(stat -c %a:%G "$A")" = "2770:$G" ] || fail "dir is $(stat -c %a:%G "$A"), want 2770:$G"
[ "$(stat -c %a:%G "$A/epmoe.0.sock")" = "660:$G" ] || fail "socket is $(stat -c %a:%G "$A/epmoe.0.sock")"
out=$(as "$UA" "$CTL" health --socket-dir "$A" 2>&1) || fail "a member of $G (supplementary) was not admitted: $out"
out=$(as "$UB" "$CTL" health --socket-dir "$A" 2>&1) && fail "a non-member of $G was admitted: $out"
stop "$A"
ok "--allowed-group $G: dir 2770 and socket 0660 of the group; a supplementary member connects, a non-member not"

# 8
Q=$T/squat; mkdir "$Q"; chmod 1777 "$Q"; mkdir "$Q/epmoe-0"; chown "$UB" "$Q/epmoe-0"
start --socket-dir "$Q"
refused "belongs to uid $IDB"
[ "$(stat -c %U "$Q/epmoe-0")" = "$UB" ] || fail "the squatted directory was changed"
ok "a squatted epmoe-0 of uid $IDB in a shared parent: refused"

echo "PASS: socket directory policy, 8 cases"
