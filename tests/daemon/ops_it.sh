#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# ops_it.sh — the daemon as an operator runs it (label mpi), checking the
# conventions that are not about steps:
#   - `ckpt make` prints progress lines when stderr is not a terminal (a log);
#   - `--model DIR` without --layers serves EVERY MoE layer of the checkpoint
#     (forward --check on the last one), and each rank logs load progress;
#   - `--log-format json --log-prefix syslog`: every line of every rank is
#     "<N>" + one JSON object with time, level, priority (= N), rank, size,
#     subsystem, file, line and message;
#   - probes (epmoectl health/status/stats, HTTP /health /ready /metrics) add
#     no log line at info;
#   - `--json` of status, stats, health and shutdown is one shape,
#     {"ranks":[{"rank":R,...},...]}, for --all and for --rank R;
#   - /metrics: no stage="total", the whole step as its own series, the
#     process_*, in-flight and last-step gauges.
#   ops_it.sh MPIEXEC BINDIR
set -u
MPIEXEC=$1 BIN=$2
CTL=$BIN/epmoectl EPMOED=$BIN/epmoed
NP=2
T=$(mktemp -d /tmp/epmoe-ops.XXXXXX)
S=$T/s
MP=""
fail() { echo "FAIL: $*"; echo "--- daemon log (tail)"; tail -20 "$T/log" 2>/dev/null; exit 1; }
ok() { echo "ok: $*"; }
cleanup() {
  if [ -n "$MP" ] && kill -0 "$MP" 2>/dev/null; then kill -TERM "$MP" 2>/dev/null; sleep 1; kill -KILL "$MP" 2>/dev/null; fi
  rm -rf "$T"
}
trap cleanup EXIT
command -v python3 >/dev/null || fail "python3 is needed to read the JSON"

# --- ckpt make, stderr to a file: progress lines, at most one per tenth
"$CTL" ckpt make --preset tiny --layers 3 --out "$T/ckpt" --seed 5 2>"$T/make.log" || fail "ckpt make: $(tail -3 "$T/make.log")"
n=$(grep -c 'ckpt make: .* of .* ([0-9]*%)' "$T/make.log")
if [ "$n" -lt 1 ] || [ "$n" -gt 9 ]; then
  fail "ckpt make printed $n progress lines to a file (want 1..9): $(cat "$T/make.log")"
fi
grep -q 'ckpt make: done, ' "$T/make.log" || fail "ckpt make: no summary line"
ok "ckpt make, not on a terminal: $n progress lines and a summary"

# --- the group: a checkpoint without --layers, JSON logs with priorities
MPORT=$((20000 + ($$ + 7919) % 20000))
$MPIEXEC -np $NP --oversubscribe "$EPMOED" --model "$T/ckpt" --backend cpu --socket-dir "$S" --warmup-tokens 1 \
  --log-format json --log-prefix syslog --metrics-port "$MPORT" >"$T/log" 2>&1 &
MP=$!
for _ in $(seq 1 150); do
  "$CTL" health --socket-dir "$S" --quiet >/dev/null 2>&1 && break
  kill -0 "$MP" 2>/dev/null || fail "daemons exited during start-up"
  sleep 0.2
done
"$CTL" health --socket-dir "$S" --quiet || fail "daemons not healthy within 30 s"

"$CTL" status --socket-dir "$S" --json >"$T/status.json" || fail "status --json"
python3 - "$T/status.json" <<'EOF' || fail "status --json: $(cat "$T/status.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert list(d) == ["ranks"], d.keys()
assert [r["rank"] for r in d["ranks"]] == [0, 1], d
for r in d["ranks"]:
    assert r["model"]["layers"] == 3, r["model"]
    assert r["config"]["layers"] == {"value": 0, "source": "default"}, r["config"]["layers"]
EOF
for layer in 0 2; do
  out=$("$CTL" forward --socket-dir "$S" --tokens-per-rank 5,3 --layer $layer --seed 2 --check 2>&1) ||
    fail "forward --layer $layer: $out"
done
ok "--model DIR without --layers serves all 3 MoE layers (forward --check on layers 0 and 2)"

# --- probes are quiet at info
http_get() { # http_get PORT PATH -> the response (bash /dev/tcp)
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.0\r\n\r\n' "$2" >&3
  timeout 5 cat <&3
  exec 3<&-
}
sleep 0.5 # let the forwards' close lines land
before=$(wc -l <"$T/log")
for _ in 1 2 3; do
  "$CTL" health --socket-dir "$S" --quiet || fail "health"
  "$CTL" status --socket-dir "$S" >/dev/null || fail "status"
  "$CTL" stats --socket-dir "$S" >/dev/null || fail "stats"
  http_get "$MPORT" /health >/dev/null || fail "GET /health"
  http_get "$MPORT" /ready >/dev/null || fail "GET /ready"
  http_get "$MPORT" /metrics >/dev/null || fail "GET /metrics"
done
sleep 0.5
after=$(wc -l <"$T/log")
[ "$after" = "$before" ] || fail "probes logged $((after - before)) lines at info: $(tail -n +$((before + 1)) "$T/log")"
ok "18 probes per rank (epmoectl health/status/stats, HTTP /health /ready /metrics): no log line"

# --- one --json shape
for cmd in "status" "stats" "health" "status --rank 1" "stats --rank 1" "health --rank 1"; do
  # shellcheck disable=SC2086  # "status --rank 1" is three words on purpose
  "$CTL" $cmd --socket-dir "$S" --json >"$T/j" || fail "$cmd --json"
  want="[0, 1]"
  case $cmd in *"--rank 1") want="[1]" ;; esac
  python3 - "$T/j" "$want" "$cmd" <<'EOF' || fail "$cmd --json: $(head -c 400 "$T/j")"
import json, sys
text = open(sys.argv[1]).read()
assert text.count("\n") == 1 and text.endswith("\n"), "not one line"
d = json.loads(text)
assert list(d) == ["ranks"], list(d)
assert [r["rank"] for r in d["ranks"]] == json.loads(sys.argv[2])
for r in d["ranks"]:
    assert list(r)[0] == "rank" and "error" not in r, r
    cmd = sys.argv[3].split()[0]
    if cmd == "health":
        assert r["health"] == "ok" and r["reason"] == "", r
    elif cmd == "stats":
        assert "total" not in r["stages"] and r["engine"]["sum"] > 0 and r["process"]["open_fds"] > 0, r
    else:
        assert r["state"] == "ready", r
EOF
done
ok "--json of status, stats, health (--all and --rank 1): {\"ranks\":[{\"rank\":R,...}]}"

# --- /metrics
resp=$(http_get "$MPORT" /metrics) || fail "GET /metrics"
echo "$resp" | grep -q 'stage="total"' && fail "/metrics still has a stage=\"total\" series"
for series in 'epmoe_stage_seconds_total{rank="0",stage="experts"}' 'epmoe_engine_seconds_total{rank="0"}' \
  'process_resident_memory_bytes{rank="0"}' 'process_open_fds{rank="0"}' 'process_cpu_seconds_total{rank="0"}' \
  'process_start_time_seconds{rank="0"}' 'epmoe_forwards_in_flight{rank="0"} 0' 'epmoe_step_in_progress{rank="0"} 0' \
  'epmoe_last_step_tokens{rank="0"} 5' 'epmoe_last_step_seconds{rank="0"}' 'epmoe_last_step_timestamp_seconds{rank="0"}'; do
  echo "$resp" | grep -qF "$series" || fail "/metrics lacks $series"
done
ok "/metrics: no stage=\"total\"; engine, process_*, in-flight and last-step series"

# --- drain, then read the whole log
"$CTL" shutdown --socket-dir "$S" --rank 0 --json >"$T/j" || fail "shutdown --json"
grep -qx '{"ranks":\[{"rank":0,"result":"shutting down"}\]}' "$T/j" || fail "shutdown --json: $(cat "$T/j")"
wait "$MP"; rc=$?; MP=""
[ $rc = 0 ] || fail "mpirun exit $rc after SHUTDOWN"
python3 - "$T/log" $NP <<'EOF' || fail "the JSON log is not what a collector expects"
import json, re, sys
want = {"time", "level", "priority", "rank", "size", "subsystem", "file", "line", "message"}
prio = {"error": 3, "warn": 4, "info": 6, "debug": 7}
ranks, progress, n = set(), set(), 0
for raw in open(sys.argv[1], encoding="utf-8"):
    m = re.match(r"<(\d)>(\{.*\})$", raw.rstrip("\n"))
    assert m, "not '<N>' + one JSON object: %r" % raw
    o = json.loads(m.group(2))
    assert set(o) == want, set(o) ^ want
    assert prio[o["level"]] == o["priority"] == int(m.group(1)), o
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", o["time"]), o["time"]
    assert o["size"] == int(sys.argv[2]) and re.match(r"[a-z_]+\.c$", o["file"]) and o["line"] > 0, o
    ranks.add(o["rank"])
    if re.search(r"loading 3 layers of .*\(\d+%\)", o["message"]):
        progress.add(o["rank"])
    n += 1
assert ranks == set(range(int(sys.argv[2]))), ranks
assert progress == ranks, "load progress lines only from ranks %s" % sorted(progress)
print("ok: %d log lines, each '<N>' + JSON with every field; load progress from every rank" % n)
EOF
echo "PASS: ops conventions, $NP ranks"
