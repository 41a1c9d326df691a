#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# run_check.sh PYTHON SOURCE_DIR — the Kubernetes manifest and container
# recipe checks, with the first of PYTHON, python3, /usr/bin/python3 that has
# PyYAML and jsonschema: every MPIJob in deploy/k8s against the schema and the
# epmoe rules (check_mpijob.py), its self-test (known-bad edits are refused),
# and the Containerfile against the manifests and the unit (check_container.py).
# Exit 77 when no interpreter has both modules.
set -u
SRC=$2
py=""
for cand in "$1" python3 /usr/bin/python3; do
  if command -v "$cand" >/dev/null && "$cand" -c 'import yaml, jsonschema' 2>/dev/null; then py=$cand; break; fi
done
[ -n "$py" ] || { echo "SKIP: no python with PyYAML and jsonschema (apt-get install python3-yaml python3-jsonschema)"; exit 77; }
schema=$SRC/tests/k8s/mpijob_v2beta1.schema.json
"$py" "$SRC/tests/k8s/check_mpijob.py" "$schema" "$SRC"/deploy/k8s/*.yaml || exit 1
"$py" "$SRC/tests/k8s/check_mpijob.py" "$schema" --self-test "$SRC/deploy/k8s/mpijob.yaml" || exit 1
"$py" "$SRC/tests/k8s/check_container.py" "$SRC" || exit 1
echo PASS
