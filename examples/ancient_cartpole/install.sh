#!/bin/sh
# Run by Dockerfile.env: Python 2.7 and requirements.txt into the image. Wheels come from
# /env/wheels when it holds them (fetch_wheels.sh on the host: no network in the build),
# else they are downloaded here with Debian's python3-pip.
set -eu
cd /env
if [ -s portal-env-ca.pem ]; then  # the host's CA bundle, for a TLS proxy (portal-env adds it)
    export PIP_CERT=/env/portal-env-ca.pem
fi
apt_install() {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
    rm -rf /var/lib/apt/lists/*
}
command -v python2.7 >/dev/null || apt_install python2.7 ca-certificates
if [ ! -e wheels/pip-20.3.4-py2.py3-none-any.whl ]; then
    command -v pip3 >/dev/null || apt_install python3-pip
    sh fetch_wheels.sh python3 wheels
fi
pip="python2.7 wheels/pip-20.3.4-py2.py3-none-any.whl/pip"
$pip install --quiet --no-cache-dir --no-index --find-links wheels setuptools wheel
$pip install --quiet --no-cache-dir --no-index --find-links wheels -r requirements.txt
rm -rf wheels
