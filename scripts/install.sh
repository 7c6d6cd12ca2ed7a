#!/usr/bin/env bash
# Installs densebench into a virtualenv, every version pinned by constraints.txt:
#   scripts/install.sh VENV SPEC       e.g. scripts/install.sh .venv '.[dev,ray]'
#
# With uv when pip can fetch it: uv unpacks and byte-compiles the ~6 GB of wheels (PyTorch's
# CUDA libraries among them) in parallel, about 1 minute from a cold cache on 2 cores against
# 2.5 with pip. uv reads none of pip's configuration, so the indexes, find-links and
# constraints pip is configured with here (pip.conf, PIP_* variables) are handed to it, and it
# is told to weigh all indexes alike, as pip does. Where uv cannot be had, or fails, pip
# installs the same pins.
set -euo pipefail
venv=$1
spec=$2
py=$venv/bin/python
cd "$(dirname "$0")/.."
test -x "$py" || "${PYTHON:-python3}" -m venv "$venv"

if "$py" -m pip install -q -c constraints.txt uv 2>/dev/null; then
    # pip's configured sources, as uv flags (one per line, so paths may hold spaces)
    mapfile -t sources < <("$py" - <<'EOF'
import shlex, subprocess, sys

out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                     capture_output=True, text=True).stdout
flags = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
         "find-links": "--find-links", "constraint": "--constraint"}
seen = set()
for line in out.splitlines():
    key, _, value = line.partition("=")
    flag = flags.get(key.rpartition(".")[2])
    if flag is None:
        continue
    for item in shlex.split(value.strip("'\"").replace("\n", " ")):
        if (flag, item) not in seen and (flag != "--index-url" or flag not in seen):
            seen.update({(flag, item), flag})  # one index-url: the first (PIP_* over pip.conf)
            print(flag)
            print(item)
EOF
    )
    if "$venv/bin/uv" pip install -q --python "$py" --index-strategy unsafe-best-match \
        --compile-bytecode "${sources[@]}" -c constraints.txt -e "$spec"; then
        exit 0
    fi
    echo "install.sh: uv could not install $spec; installing with pip instead" >&2
fi
"$py" -m pip install -q -c constraints.txt -e "$spec"
