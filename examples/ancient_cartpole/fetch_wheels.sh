#!/bin/sh
# Downloads what install.sh installs under Python 2.7 (pip 20.3.4, setuptools and wheel to
# build gym's sdist, and requirements.txt) into DIR, with any Python 3's pip: nothing is
# installed. On the host, for an image build without network:
#     sh examples/ancient_cartpole/fetch_wheels.sh python3 examples/ancient_cartpole/wheels
# Usage: sh fetch_wheels.sh [PYTHON] [DIR]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${1:-python3}
dir=${2:-$here/wheels}
binary="--only-binary=:all: --python-version 2.7 --implementation cp --abi cp27mu"
# shellcheck disable=SC2086
"$python" -m pip download --quiet --dest "$dir" $binary --platform "manylinux1_$(uname -m)" \
    pip==20.3.4 setuptools==44.1.1 wheel==0.37.1 \
    $(grep -v -e '^#' -e '^gym==' "$here/requirements.txt")
"$python" -m pip download --quiet --dest "$dir" --no-deps --no-binary=:all: \
    "$(grep '^gym==' "$here/requirements.txt")"
