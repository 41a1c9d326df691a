#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""check_mpijob.py SCHEMA MANIFEST... -- validate epmoe's Kubernetes manifests.

Each MPIJob document is checked against SCHEMA (mpijob_v2beta1.schema.json:
types, required keys, enums and the operator's own validation rules), then
against the rules that make an epmoe group start and serve:

  workers-ready   under launcherCreationPolicy WaitForWorkersReady no probe of
                  a worker container may need the daemons: only the launcher's
                  mpirun starts them, so the launcher would never be created
  ssh-user        workers run sshd as their first container (the operator
                  mounts the keys there) with a tcpSocket readiness probe on
                  its port; the keys are mounted in the home of the pods' user,
                  not /root, when the pods do not run as root
  ranks           the launcher's EPMOE_WORKERS / EPMOE_SLOTS equal the Worker
                  replicas and slotsPerWorker; with the cuda backend each
                  worker asks for exactly slotsPerWorker GPUs
  launcher        the launcher runs epmoe-launch.sh and its readiness probe
                  tests the file that script creates
  sockets         EPMOE_SOCKET_DIR is a subdirectory of an emptyDir mounted
                  in the workers (the mount itself is world-writable and the
                  daemon refuses it)
  istio           every pod template opts out of sidecar injection

--self-test MANIFEST: apply known-bad edits to MANIFEST (the deadlock and the
root-owned keys of issue 16, a misspelt field, a second launcher, ...) and
check each one is refused with the expected message, so the checks can fail.
Exit 0 all good, 1 a manifest (or the self-test) failed, 77 when PyYAML or
jsonschema are missing.
"""
import copy
import json
import sys

try:
    import jsonschema
    import yaml
except ImportError as e:  # the caller tries another interpreter, then skips
    print(f"SKIP: {e} (pip install pyyaml jsonschema, or apt-get install python3-yaml python3-jsonschema)")
    sys.exit(77)

DEFAULT_READY_FILE = "/tmp/epmoe-ready"
DEFAULT_SOCKET_DIR = "/run/epmoe/sock"


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def runs_daemon_tool(probe):
    cmd = " ".join(probe.get("exec", {}).get("command", []))
    return "epmoectl" in cmd or "epmoed" in cmd


def pod_user(pod_spec, container):
    for ctx in (container.get("securityContext") or {}, pod_spec.get("securityContext") or {}):
        if "runAsUser" in ctx:
            return ctx["runAsUser"]
    return None


def check_rules(doc):
    """Errors (strings) of the epmoe rules for one schema-valid MPIJob."""
    errs = []
    spec = doc["spec"]
    reps = spec["mpiReplicaSpecs"]
    launcher = reps["Launcher"]["template"]
    worker = reps.get("Worker", {}).get("template")
    slots = spec.get("slotsPerWorker", 1)
    policy = spec.get("launcherCreationPolicy", "AtStartup")
    if worker is None:
        return ["ranks: no Worker replica spec (the daemons run on workers)"]
    wspec = worker["spec"]

    # workers-ready
    if policy == "WaitForWorkersReady":
        for c in wspec["containers"]:
            for kind in ("readinessProbe", "startupProbe", "livenessProbe"):
                if kind in c and runs_daemon_tool(c[kind]):
                    errs.append(f"workers-ready: worker container '{c['name']}' {kind} runs "
                                f"{c[kind]['exec']['command'][0]}: with WaitForWorkersReady the launcher "
                                "(which starts the daemons) waits for this probe: deadlock")

    # ssh-user
    first = wspec["containers"][0]
    cmd = first.get("command", [])
    if not cmd or not cmd[0].endswith("sshd"):
        errs.append(f"ssh-user: the first worker container '{first['name']}' does not run sshd "
                    "(mpirun reaches the workers over ssh; the operator mounts the keys into containers[0])")
    rp = first.get("readinessProbe", {})
    ports = {p.get("name"): p["containerPort"] for p in first.get("ports", [])}
    port = rp.get("tcpSocket", {}).get("port")
    if port is None or (isinstance(port, str) and port not in ports):
        errs.append("ssh-user: the sshd container needs a tcpSocket readinessProbe on its port")
    mount = spec.get("sshAuthMountPath", "/root/.ssh")
    for name, tmpl in (("launcher", launcher), ("worker", worker)):
        for c in tmpl["spec"]["containers"][:1]:
            uid = pod_user(tmpl["spec"], c)
            if uid not in (None, 0) and mount.startswith("/root"):
                errs.append(f"ssh-user: {name} pods run as uid {uid} but sshAuthMountPath is {mount} "
                            "(keys mounted for root)")

    # launcher
    lc = launcher["spec"]["containers"][0]
    lenv = env_of(lc)
    if not any(a.endswith("epmoe-launch.sh") for a in lc.get("command", [])):
        errs.append("launcher: the launcher container does not run epmoe-launch.sh")
    ready_file = lenv.get("EPMOE_READY_FILE") or DEFAULT_READY_FILE
    lrp = lc.get("readinessProbe", {}).get("exec", {}).get("command", [])
    if ready_file not in lrp:
        errs.append(f"launcher: its readinessProbe does not test {ready_file} (the group-ready file)")

    # ranks
    replicas = reps["Worker"]["replicas"]
    for var, want in (("EPMOE_WORKERS", replicas), ("EPMOE_SLOTS", slots)):
        got = lenv.get(var)
        if got is None or not got.isdigit() or int(got) != want:
            errs.append(f"ranks: launcher {var}={got!r}, expected {want}")
    if lenv.get("EPMOE_BACKEND", "cuda") != "cpu":
        gpus = first.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if gpus is None or int(gpus) != slots:
            errs.append(f"ranks: each worker asks for nvidia.com/gpu={gpus} but slotsPerWorker is {slots} "
                        "(one rank per GPU)")

    # sockets
    sock = lenv.get("EPMOE_SOCKET_DIR") or DEFAULT_SOCKET_DIR
    empty = {v["name"] for v in wspec.get("volumes", []) if "emptyDir" in v}
    mounts = [m["mountPath"].rstrip("/") for m in first.get("volumeMounts", []) if m["name"] in empty]
    if sock.rstrip("/") in mounts:
        errs.append(f"sockets: EPMOE_SOCKET_DIR={sock} is an emptyDir mount point (world-writable, refused "
                    "by the daemon); use a subdirectory")
    elif not any(sock.startswith(m + "/") for m in mounts):
        errs.append(f"sockets: EPMOE_SOCKET_DIR={sock} is not inside an emptyDir mounted in the workers")

    # istio
    for name, tmpl in (("launcher", launcher), ("worker", worker)):
        ann = tmpl.get("metadata", {}).get("annotations", {})
        if ann.get("sidecar.istio.io/inject") != "false":
            errs.append(f"istio: the {name} template lacks sidecar.istio.io/inject: \"false\"")
    return errs


def check_doc(validator, doc):
    errs = [f"schema: {'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]
    return errs or check_rules(doc)


def load_jobs(path):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    return [d for d in docs if d.get("kind") == "MPIJob"]


# Known-bad edits of a good manifest and the message each must produce.
def _edit(path, value):
    def apply(doc):
        node = doc
        for k in path[:-1]:
            node = node[k]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return apply


DELETE = object()
W = ["spec", "mpiReplicaSpecs", "Worker", "template", "spec"]
L = ["spec", "mpiReplicaSpecs", "Launcher", "template", "spec"]


def _launcher_env(name, value):
    def apply(doc):
        env = doc["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["env"]
        env[:] = [e for e in env if e["name"] != name] + [{"name": name, "value": value}]
    return apply


SELF_TEST = [
    ("the issue-16 deadlock: worker readiness runs epmoectl",
     _edit(W + ["containers", 0, "readinessProbe"],
           {"exec": {"command": ["/opt/epmoe/bin/epmoectl", "health", "--all", "--quiet"]}}), "deadlock"),
    ("keys mounted for root while pods run as 1000", _edit(["spec", "sshAuthMountPath"], "/root/.ssh"),
     "keys mounted for root"),
    ("default sshAuthMountPath while pods run as 1000", _edit(["spec", "sshAuthMountPath"], DELETE),
     "keys mounted for root"),
    ("misspelt field", _edit(["spec", "slotPerWorker"], 4), "Additional properties are not allowed"),
    ("two launchers", _edit(["spec", "mpiReplicaSpecs", "Launcher", "replicas"], 2), "1 was expected"),
    ("string replicas", _edit(["spec", "mpiReplicaSpecs", "Worker", "replicas"], "2"), "is not of type 'integer'"),
    ("unknown cleanPodPolicy", _edit(["spec", "runPolicy", "cleanPodPolicy"], "Always"), "is not one of"),
    ("restartPolicy Always", _edit(["spec", "mpiReplicaSpecs", "Worker", "restartPolicy"], "Always"),
     "is not one of"),
    ("container without image", _edit(W + ["containers", 0, "image"], DELETE), "'image' is a required property"),
    ("no launcher", _edit(["spec", "mpiReplicaSpecs", "Launcher"], DELETE), "'Launcher' is a required property"),
    ("worker count mismatch", _edit(["spec", "mpiReplicaSpecs", "Worker", "replicas"], 3), "EPMOE_WORKERS"),
    ("GPUs per worker != slots", _edit(W + ["containers", 0, "resources", "limits", "nvidia.com/gpu"], 8),
     "one rank per GPU"),
    ("socket dir = the emptyDir mount", _launcher_env("EPMOE_SOCKET_DIR", "/run/epmoe"), "world-writable"),
    ("socket dir outside any emptyDir", _launcher_env("EPMOE_SOCKET_DIR", "/var/run/x"), "not inside an emptyDir"),
    ("launcher readiness on another file", _launcher_env("EPMOE_READY_FILE", "/tmp/other"), "group-ready file"),
    ("workers without sshd", _edit(W + ["containers", 0, "command"], ["sleep", "infinity"]), "does not run sshd"),
    ("sidecar injection on", _edit(L[:-1] + ["metadata", "annotations"], {}), "istio"),
]


def self_test(validator, path):
    base = load_jobs(path)
    if not base:
        print(f"FAIL: self-test: no MPIJob in {path}")
        return 1
    bad = 0
    for what, edit, want in SELF_TEST:
        doc = copy.deepcopy(base[0])
        edit(doc)
        errs = check_doc(validator, doc)
        hit = [e for e in errs if want in e]
        if hit:
            print(f"ok: refused {what}: {hit[0]}")
        else:
            print(f"FAIL: self-test '{what}': expected an error containing '{want}', got {errs or 'none'}")
            bad += 1
    return 1 if bad else 0


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    with open(argv[1]) as f:
        schema = json.load(f)
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    if argv[2] == "--self-test":
        return self_test(validator, argv[3])
    failed = 0
    for path in argv[2:]:
        jobs = load_jobs(path)
        if not jobs:
            print(f"FAIL: {path}: no MPIJob document")
            failed += 1
        for doc in jobs:
            errs = check_doc(validator, doc)
            name = doc.get("metadata", {}).get("name", "?")
            for e in errs:
                print(f"FAIL: {path}: MPIJob {name}: {e}")
            if not errs:
                print(f"ok: {path}: MPIJob {name}: schema and epmoe rules")
            failed += bool(errs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
