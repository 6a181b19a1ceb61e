#!/usr/bin/env bash
# Install mindone 0.5.0 with its own pins into a private --target folder (never into the system site-packages).
# Idempotent: a folder whose .recipe stamp equals this recipe is reused as is; anything else is rebuilt beside it
# and swapped in only when complete. Prints the folder. Usage: install.sh [DIR]   (PYTHON: the interpreter to use)
# Used by tests/test_mindone_load.py: mindone 0.5 pins transformers 4.57.1 / huggingface-hub 0.36, which clash with
# the diffusers / transformers the torch references use, so mindone runs in a subprocess with this folder first on
# PYTHONPATH.
set -euo pipefail
DIR="${1:-${PIXART_MINDONE_DIR:-$HOME/.cache/pixart-ms/mindone-0.5}}"
PY="${PYTHON:-python}"
PKGS=(
  mindone==0.5.0                   # mindone.diffusers / mindone.transformers (pure python)
  transformers==4.57.1             # mindone 0.5.0 pins it (system has 5.x)
  huggingface-hub==0.36.2          # transformers 4.57 needs <1.0 (system has 2.x)
  tokenizers==0.22.1               # transformers 4.57.1 checks tokenizers<=0.23.0 at import (system 0.23.3)
  omegaconf==2.3.0                 # imported by mindone/__init__ (mindone.utils.config)
  antlr4-python3-runtime==4.9.3    # omegaconf's dependency
  trampoline==0.1.2                # imported when PixArtSigmaPipeline loads its scheduler module
)
RECIPE="$(printf '%s\n' "${PKGS[@]%%#*}" | sed 's/ *$//'; "$PY" -c 'import sys; print(sys.version_info[:2])')"
mkdir -p "$(dirname "$DIR")"
exec 9>"$DIR.lock"; flock 9        # concurrent CI jobs: one installs, the others wait and reuse
if [[ -f "$DIR/.recipe" && "$(cat "$DIR/.recipe")" == "$RECIPE" ]]; then echo "$DIR"; exit 0; fi
TMP="$(mktemp -d "$DIR.tmp.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile --target "$TMP" \
  $(printf '%s\n' "${PKGS[@]%%#*}") >&2
rm -rf "$TMP/bin"
printf '%s' "$RECIPE" > "$TMP/.recipe"
rm -rf "$DIR.old"; [[ -e "$DIR" ]] && mv "$DIR" "$DIR.old"
mv "$TMP" "$DIR"; rm -rf "$DIR.old"; trap - EXIT
echo "$DIR"
