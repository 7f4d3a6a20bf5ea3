#!/usr/bin/env bash
# Creates or updates a project-local Python venv from requirement files.
#   infra/venv.sh VENV_DIR [nodeps:]REQ_FILE...
# A file given as nodeps:FILE is installed with --no-deps (packages used only
# for the data they ship).
# Idempotent: a stamp inside the venv holds the hash of the requirement files
# (and of the Python version); when it matches, nothing is installed. Missing
# requirement files are skipped with a note, so the venv works before every
# part of the project has committed its own list.
set -euo pipefail

venv=$1
shift
reqs=()
for f in "$@"; do
  if [[ -f ${f#nodeps:} ]]; then reqs+=("$f"); else echo "venv: ${f#nodeps:} not present yet, skipped"; fi
done

python=${PYTHON:-python3}
want=$({ "$python" --version; for f in "${reqs[@]}"; do echo "== $f"; cat "${f#nodeps:}"; done; } | sha256sum | cut -d' ' -f1)
stamp=$venv/.requirements.sha256

if [[ -x $venv/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
  echo "venv: $venv up to date"
  exit 0
fi

if ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check --quiet)
args=()
nodeps=()
for f in "${reqs[@]}"; do
  if [[ $f == nodeps:* ]]; then nodeps+=(-r "${f#nodeps:}"); else args+=(-r "$f"); fi
done
if ((${#args[@]})); then "${pip[@]}" "${args[@]}"; fi
if ((${#nodeps[@]})); then "${pip[@]}" --no-deps "${nodeps[@]}"; fi
echo "$want" >"$stamp"
echo "venv: $venv ready (${reqs[*]})"
