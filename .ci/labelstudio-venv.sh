#!/usr/bin/env bash
# Create (once) the virtualenv that holds Label Studio 1.23.2 for the end-to-end tests, and
# print its path. Label Studio pins its own Django/Flask stack, so it must live apart from the
# project's environment. Idempotent: an existing venv with the right version is reused as is.
#
#   VENV=$(bash .ci/labelstudio-venv.sh)          # default: ~/.cache/clinie/label-studio-1.23.2
#   CLINIE_LS_VENV=/some/dir bash .ci/labelstudio-venv.sh
#
# Progress goes to stderr; stdout is only the venv path.
set -euo pipefail

LS_VERSION=1.23.2
VENV="${CLINIE_LS_VENV:-$HOME/.cache/clinie/label-studio-$LS_VERSION}"
PYTHON="${PYTHON:-python3}"

is_ready() {
    [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/label-studio" ] &&
        "$VENV/bin/python" -c "import label_studio; assert label_studio.__version__ == '$LS_VERSION'" \
            >/dev/null 2>&1
}

if ! is_ready; then
    echo "labelstudio-venv: installing label-studio==$LS_VERSION into $VENV (about a minute)" >&2
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "label-studio==$LS_VERSION" >&2
    if ! is_ready; then
        echo "labelstudio-venv: $VENV does not import label_studio $LS_VERSION after install" >&2
        exit 1
    fi
fi

echo "$VENV"
