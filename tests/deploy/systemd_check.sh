#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# systemd_check.sh — the systemd recipe in deploy/systemd, checked with
# systemd's own tools (no running systemd needed):
#   1. `systemd-analyze verify` on the unit prints nothing and exits 0
#      (unknown keys, bad values and missing executables all print);
#   2. `systemd-analyze security --offline` exposure is below 5.0;
#   3. the sysusers/tmpfiles snippets, applied to an empty root by
#      systemd-sysusers/systemd-tmpfiles, make user+group epmoe and
#      /run/epmoe 0750 owned by them (root only: it chowns);
#   4. each check fails on a deliberately broken input (so it can fail).
# Exit 77 when systemd-analyze is not installed.
#   systemd_check.sh DEPLOY_SYSTEMD_DIR
set -u
D=$1
command -v systemd-analyze >/dev/null || { echo "SKIP: systemd-analyze not installed (apt-get install systemd)"; exit 77; }
T=$(mktemp -d /tmp/epmoe-systemd.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# verify UNITFILE -> prints systemd-analyze's output; returns 0 only when it exited 0 and said nothing
verify() {
  local out rc
  out=$(systemd-analyze verify --man=no "$1" 2>&1); rc=$?
  [ -n "$out" ] && echo "$out"
  [ "$rc" = 0 ] && [ -z "$out" ]
}

# 1. verify: an instance of the template, as `systemctl start epmoe@ci` would load it
cp "$D/epmoe@.service" "$T/epmoe@ci.service"
verify "$T/epmoe@ci.service" || fail "systemd-analyze verify complains about epmoe@.service"
echo "ok: systemd-analyze verify epmoe@.service: clean"
sed 's/^Type=notify$/Type=notfy/' "$D/epmoe@.service" >"$T/epmoe@bad.service"
grep -q '^Type=notfy$' "$T/epmoe@bad.service" || fail "self-check: could not break the unit"
verify "$T/epmoe@bad.service" >/dev/null && fail "self-check: verify accepted Type=notfy"
echo "ok: self-check: a unit with Type=notfy is refused"

# the properties the daemon relies on
for kv in Type=notify NotifyAccess=all RuntimeDirectory=epmoe/%i RuntimeDirectoryMode=0750 \
  Environment=EPMOE_SOCKET_DIR=/run/epmoe/%i Environment=EPMOE_LOG_PREFIX=syslog User=epmoe Group=epmoe; do
  grep -qx "$kv" "$D/epmoe@.service" || fail "epmoe@.service lacks $kv"
done
grep -qE '^WatchdogSec=[1-9]' "$D/epmoe@.service" || fail "epmoe@.service has no WatchdogSec"
echo "ok: Type=notify, NotifyAccess=all, WatchdogSec, RuntimeDirectory 0750 for epmoe"

# 2. exposure below 5.0 (the threshold is in tenths)
out=$(systemd-analyze security --offline=true --threshold=49 "$T/epmoe@ci.service" 2>&1); rc=$?
echo "$out" | grep 'Overall exposure'
[ "$rc" = 0 ] || { echo "$out" | grep '✗'; fail "exposure of epmoe@.service is 5.0 or more"; }
printf '[Service]\nType=simple\nExecStart=/bin/true\n' >"$T/bare@ci.service"
systemd-analyze security --offline=true --threshold=49 "$T/bare@ci.service" >/dev/null 2>&1 &&
  fail "self-check: an unhardened unit passed the exposure threshold"
echo "ok: exposure below 5.0 (an unhardened unit is refused)"

# 3. sysusers + tmpfiles on an empty root
if [ "$(id -u)" != 0 ]; then
  echo "note: not root: sysusers/tmpfiles not applied (they chown)"
elif ! command -v systemd-sysusers >/dev/null || ! command -v systemd-tmpfiles >/dev/null; then
  echo "note: systemd-sysusers/systemd-tmpfiles missing: snippets not applied"
else
  R=$T/root
  mkdir -p "$R/etc"
  install -D -m 0644 "$D/epmoe.sysusers.conf" "$R/usr/lib/sysusers.d/epmoe.conf"
  install -D -m 0644 "$D/epmoe.tmpfiles.conf" "$R/usr/lib/tmpfiles.d/epmoe.conf"
  systemd-sysusers --root="$R" || fail "systemd-sysusers failed on epmoe.sysusers.conf"
  uid=$(awk -F: '$1 == "epmoe" {print $3}' "$R/etc/passwd")
  gid=$(awk -F: '$1 == "epmoe" {print $3}' "$R/etc/group")
  { [ -n "$uid" ] && [ -n "$gid" ]; } || fail "no user/group epmoe after systemd-sysusers"
  ugid=$(awk -F: '$1 == "epmoe" {print $4}' "$R/etc/passwd")
  [ "$ugid" = "$gid" ] || fail "user epmoe's primary group is $ugid, not epmoe ($gid)"
  systemd-tmpfiles --root="$R" --create || fail "systemd-tmpfiles failed on epmoe.tmpfiles.conf"
  got=$(stat -c '%a %u %g' "$R/run/epmoe") || fail "no /run/epmoe after systemd-tmpfiles"
  [ "$got" = "750 $uid $gid" ] || fail "/run/epmoe is '$got', expected '750 $uid $gid'"
  echo "ok: sysusers makes epmoe ($uid:$gid); tmpfiles makes /run/epmoe 0750 epmoe:epmoe"
fi
echo PASS
