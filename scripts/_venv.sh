# Sourced by scripts/serve and scripts/test: the project's .venv, created and kept installed.
# Expects $root (the checkout); sets $venv and defines `install SPEC NAME`.

venv="$root/.venv"

find_python() {
    local candidate
    for candidate in python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return
        fi
    done
    echo "$(basename "$0"): Python 3.11 or newer is required (none found on PATH)" >&2
    exit 1
}

# install SPEC NAME: pip install -e SPEC into .venv unless this pyproject.toml was already installed with it.
install() {
    local spec="$1" stamp="$venv/.installed-$2" want
    if [[ ! -x "$venv/bin/python" ]]; then
        "$(find_python)" -m venv "$venv"
    fi
    want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1) $spec"
    if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root$spec"
        echo "$want" >"$stamp"
    fi
}
