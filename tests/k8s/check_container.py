#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""check_container.py SOURCE_DIR -- the container recipe agrees with the
manifests and the unit that use its image (no image is built here):

  stages     a build stage on a CUDA devel image, a final stage on the CUDA
             runtime image of the same CUDA_VERSION
  prefix     the final stage copies only the installed PREFIX from the build
             stage (plus the ssh configs), and PREFIX is the /opt/epmoe every
             /opt/epmoe path in deploy/k8s and deploy/systemd starts with
  user       the final stage runs as a non-root uid, the runAsUser of every
             MPIJob pod, and that user owns the sshd config
  ssh        sshd_config's Port = ssh_config's Port = the worker's ssh
             containerPort = EXPOSE; its key files live in sshAuthMountPath

Exit 0 ok, 1 a mismatch, 77 without PyYAML.
"""
import os
import re
import sys

try:
    import yaml
except ImportError as e:
    print(f"SKIP: {e}")
    sys.exit(77)


def stages(text):
    """[(from_image, alias, [instruction lines])] with continuation lines joined."""
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    out, args = [], {}
    for ln in lines:
        ln = ln.strip()
        if not ln or ln.startswith("#"):
            continue
        word, _, rest = ln.partition(" ")
        word = word.upper()
        if word == "ARG" and not out:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip()
        elif word == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            out.append((m.group(1), m.group(2), []))
        elif out:
            out[-1][2].append((word, rest))
    return args, out


def main(src):
    errs = []
    cf = open(os.path.join(src, "deploy/container/Containerfile")).read()
    args, st = stages(cf)
    prefix = args.get("PREFIX")
    if len(st) < 2:
        return [f"stages: {len(st)} FROM line(s); expected a build stage and a runtime stage"]
    build, final = st[0], st[-1]
    if not re.search(r"nvidia/cuda:\$\{CUDA_VERSION\}-devel-", build[0]) or not build[1]:
        errs.append(f"stages: the build stage is FROM {build[0]}, expected a named nvidia/cuda ...-devel- stage")
    if not re.search(r"nvidia/cuda:\$\{CUDA_VERSION\}-runtime-", final[0]):
        errs.append(f"stages: the final stage is FROM {final[0]}, expected nvidia/cuda:${{CUDA_VERSION}}-runtime-")
    if not any(w == "RUN" and "cmake --install" in r for w, r in build[2]):
        errs.append("stages: the build stage does not run `cmake --install`")

    copies = [r for w, r in final[2] if w == "COPY"]
    from_build = [r for r in copies if r.startswith("--from=")]
    want = f"--from={build[1]} ${{PREFIX}} ${{PREFIX}}"
    if from_build != [want]:
        errs.append(f"prefix: the final stage copies {from_build} from the build stage, expected only [{want!r}]")
    for r in copies:
        if r not in from_build and not re.search(r"deploy/container/ssh_?d?_config ", r):
            errs.append(f"prefix: the final stage copies more than the prefix and the ssh configs: COPY {r}")
    if prefix != "/opt/epmoe":
        errs.append(f"prefix: ARG PREFIX={prefix}, but deploy/ and the docs use /opt/epmoe")
    for sub in ("deploy/k8s", "deploy/systemd"):
        for name in sorted(os.listdir(os.path.join(src, sub))):
            text = open(os.path.join(src, sub, name)).read()
            for p in re.findall(r"/opt/[A-Za-z0-9_.-]+", text):
                if p != "/opt/epmoe":
                    errs.append(f"prefix: {sub}/{name} uses {p}, not the image's /opt/epmoe")

    users = [r for w, r in final[2] if w == "USER"]
    uid = users[-1].split(":")[0] if users else "root"
    if uid in ("root", "0"):
        errs.append("user: the final stage runs as root")
    m = re.search(r"useradd [^&]*-u (\d+)", cf)
    if not m or m.group(1) != uid:
        errs.append(f"user: USER {uid} is not the uid the image creates ({m.group(1) if m else 'none'})")
    if not any(r.startswith(f"--chown={uid}:") and "sshd_config" in r for r in copies):
        errs.append(f"user: the sshd config is not owned by uid {uid}")

    sshd = open(os.path.join(src, "deploy/container/sshd_config")).read()
    ssh = open(os.path.join(src, "deploy/container/ssh_config")).read()
    sshd_port = re.search(r"^Port (\d+)", sshd, re.M)
    ssh_port = re.search(r"^\s*Port (\d+)", ssh, re.M)
    expose = [r for w, r in final[2] if w == "EXPOSE"]
    ports = {x.group(1) if x else None for x in (sshd_port, ssh_port)} | set(expose)
    if len(ports) != 1 or None in ports:
        errs.append(f"ssh: ports differ: sshd_config {sshd_port and sshd_port.group(1)}, ssh_config "
                    f"{ssh_port and ssh_port.group(1)}, EXPOSE {expose}")
    key_dirs = {os.path.dirname(p) for p in re.findall(r"^(?:HostKey|AuthorizedKeysFile) (\S+)", sshd, re.M)}

    for path in sorted(os.listdir(os.path.join(src, "deploy/k8s"))):
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(open(os.path.join(src, "deploy/k8s", path))):
            if not doc or doc.get("kind") != "MPIJob":
                continue
            spec = doc["spec"]
            if key_dirs != {spec.get("sshAuthMountPath")}:
                errs.append(f"ssh: {path}: sshAuthMountPath {spec.get('sshAuthMountPath')} but sshd reads keys "
                            f"from {sorted(key_dirs)}")
            for role, rs in spec["mpiReplicaSpecs"].items():
                pod = rs["template"]["spec"]
                got = (pod.get("securityContext") or {}).get("runAsUser")
                if str(got) != uid:
                    errs.append(f"user: {path}: {role} pods run as {got}, the image's user is {uid}")
            wc = spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
            cport = {str(p["containerPort"]) for p in wc.get("ports", [])}
            if not cport & ports:
                errs.append(f"ssh: {path}: worker ports {sorted(cport)} do not include sshd's {sorted(ports)}")
    return errs


if __name__ == "__main__":
    problems = main(sys.argv[1])
    for p in problems:
        print(f"FAIL: {p}")
    if not problems:
        print("ok: Containerfile: devel build stage, runtime final stage with the /opt/epmoe prefix only, "
              "non-root user = the pods' runAsUser, sshd port and key dir = the MPIJob's")
    sys.exit(1 if problems else 0)
