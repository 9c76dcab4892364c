# Sourced by scripts/*: make sure .venv exists and holds this checkout with the given extra.
# Re-installs only when pyproject.toml or scripts/constraints.txt changed (a stamp keeps
# their hash). Versions come from scripts/constraints.txt, so a clean clone is repeatable.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

ensure_venv() {
    local extra="$1"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating $VENV" >&2
        "$PYTHON" -m venv "$VENV"
    fi
    local stamp="$VENV/.sky-mini-$extra.stamp"
    local want
    want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/constraints.txt" | sha256sum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "==> installing sky-mini${extra:+[$extra]} into $VENV" >&2
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2 || true
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            -c "$ROOT/scripts/constraints.txt" -e "$ROOT${extra:+[$extra]}" >&2
        echo "$want" > "$stamp"
    fi
}
