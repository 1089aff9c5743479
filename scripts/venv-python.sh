#!/usr/bin/env bash
# The interpreter the Makefile makes .venv from, chosen before make does anything else.
#
# Usage: scripts/venv-python.sh VENV [PYTHON]
#   PYTHON given (make PYTHON=...): that interpreter; a VENV made by another one is removed, so
#     that make makes it anew (cargo's build is kept).
#   PYTHON empty: a VENV of CPython 3.10+ is kept, whatever made it; otherwise python3, and an
#     older VENV is removed.
# Prints the interpreter on standard output and what it removed on standard error. A Python
# older than 3.10, or one that does not run, is refused: one line saying what to do on standard
# output, exit status 2.
set -uo pipefail

venv=$1
python=${2:-}
floor=(3 10)

# "IMPLEMENTATION VERSION BASE_PREFIX OK", OK being 1 for CPython 3.10 or later.
identify() {
    "$1" -c 'import platform, sys
ok = platform.python_implementation() == "CPython" and sys.version_info >= (3, 10)
print(platform.python_implementation(), platform.python_version(), sys.base_prefix, int(ok))' \
        2>/dev/null
}

# A newer interpreter to suggest, if one on PATH runs.
suggest() {
    local minor
    for minor in 13 12 11 10; do
        if [ "$(identify "python3.$minor" | awk '{print $NF}')" = 1 ]; then
            echo "python3.$minor"
            return
        fi
    done
    echo "/path/to/python3.${floor[1]}"
}

have=""
[ -x "$venv/bin/python" ] && have=$(identify "$venv/bin/python")

if [ -z "$python" ]; then
    if [ -n "$have" ] && [ "${have##* }" = 1 ]; then
        echo python3
        exit 0
    fi
    python=python3
fi

want=$(identify "$python")
if [ -z "$want" ]; then
    echo "PYTHON=$python does not run; name a CPython ${floor[0]}.${floor[1]} or later, for" \
        "example: PYTHON=$(suggest) make demo"
    exit 2
fi
if [ "${want##* }" != 1 ]; then
    read -r impl version _ <<<"$want"
    echo "$python is $impl $version; pagebuddy needs CPython ${floor[0]}.${floor[1]} or later." \
        "Name one with PYTHON, for example: PYTHON=$(suggest) make demo"
    exit 2
fi

if [ -n "$have" ] && [ "${have% *}" != "${want% *}" ]; then
    read -r impl version _ <<<"$have"
    echo "make: $venv was made by $impl $version, not by $python; making it anew" >&2
    rm -rf "$venv"
fi
echo "$python"
