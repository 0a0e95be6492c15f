#!/bin/sh
# Build the older Python a device worker can run under on this host (`make oldpython`):
# a Debian 11 (bullseye) root made by debootstrap, with its Python 3.9, and pip's numpy,
# tflite-runtime and OpenVINO 2022.3 (the last release with the NCS2's MYRIAD plugin) in its
# /usr/local. packaging/oldpython/python3.9 runs that interpreter with the host's paths unchanged
# (policy: worker_python = "<repo>/packaging/oldpython/python3.9"). Idempotent: each step is
# skipped when its result is there; it prints what it did. Run as root (debootstrap, mounts).
#
#   TENANTD_OLDPY_ROOT  where the root goes (default /var/lib/tenantd-oldpy; never in the repository)
#   DEBIAN_MIRROR       the Debian mirror (default http://deb.debian.org/debian)
#   OLDPY_REBUILD=1     remove the root and build it again
#   OLDPY_PY36          a CPython 3.6 on this host (default: python3.6 on PATH, else pyenv's): when there
#                       is one, also a venv at $TENANTD_OLDPY_ROOT/py36 with numpy 1.19.5 and OpenVINO
#                       2022.2 (the last with cp36 wheels; PyPI has no tflite-runtime for cp36 on x86-64),
#                       for worker_python = "$TENANTD_OLDPY_ROOT/py36/bin/python" (JetPack 4.6's Python)
set -eu

top=${TENANTD_OLDPY_ROOT:-/var/lib/tenantd-oldpy}
root=$top/bullseye
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
here=$(cd "$(dirname "$0")" && pwd)
wrapper=$here/python3.9
# Exact pins: the numpy both wheels accept (tflite-runtime 2.14 needs >= 1.23.2, OpenVINO 2022.3
# <= 1.23.4); Debian 11's own python3-numpy (1.19.5) stays below it in sys.path, unused.
pins="numpy==1.23.4 tflite-runtime==2.14.0 openvino==2022.3.2"

say() { echo "oldpython: $*"; }
die() { echo "oldpython: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and the wrapper's mount namespace need it)"
for tool in debootstrap unshare mount; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (apt-get install debootstrap util-linux mount)"
done
case $root in /|/usr|/usr/*|/work/*) die "refusing to build the root at $root" ;; esac

if [ "${OLDPY_REBUILD:-0}" = 1 ] && [ -d "$root" ]; then
    say "removing $root (OLDPY_REBUILD=1)"
    rm -rf --one-file-system "$root"
fi

if [ -e "$root/.tenantd-oldpy-debootstrap" ]; then
    say "Debian 11 root: already at $root"
else
    python3 - "$mirror" <<'PY' || die "the Debian mirror $mirror has no bullseye suite or cannot be reached (set DEBIAN_MIRROR)"
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/dists/bullseye/Release", timeout=30).read(64)
except OSError as exc:
    sys.exit(f"oldpython: {sys.argv[1]}/dists/bullseye/Release: {exc}")
PY
    [ -d "$root" ] && { say "removing the unfinished root at $root"; rm -rf --one-file-system "$root"; }
    mkdir -p "$top"
    say "debootstrap --variant=minbase bullseye $root $mirror (about a minute)"
    debootstrap --variant=minbase --include=python3,python3-numpy,python3-pip,ca-certificates \
        bullseye "$root" "$mirror" > "$top/debootstrap.log" 2>&1 ||
        die "debootstrap failed: see $top/debootstrap.log"
    touch "$root/.tenantd-oldpy-debootstrap"
    say "Debian 11 root: built at $root (log: $top/debootstrap.log)"
fi
touch "$root/.tenantd-oldpy-built"  # the wrapper runs from here on

installed=$("$wrapper" -m pip freeze --isolated 2>/dev/null | tr '\n' ' ')
missing=""
for pin in $pins; do
    case " $installed " in *" $pin "*) ;; *) missing="$missing $pin" ;; esac
done
if [ -z "$missing" ]; then
    say "pip packages: already $pins"
else
    say "pip install$missing (from PyPI, into $root/usr/local)"
    # --isolated: PyPI only, whatever pip configuration the host has.
    "$wrapper" -m pip install --isolated --no-cache-dir --disable-pip-version-check $pins ||
        die "pip install failed (is PyPI reachable?)"
fi

say "check:"
"$wrapper" - <<'PY' || die "the interpreter does not import its runtimes: see above"
import sys
import numpy
import openvino.runtime as ov
import tflite_runtime
print("  python", sys.version.split()[0], "numpy", numpy.__version__, "tflite-runtime", tflite_runtime.__version__,
      "openvino", ov.get_version().split("-")[0], "devices", ov.Core().available_devices)
PY
say "ready: worker_python = \"$wrapper\""

# Python 3.6, where this host has one (Debian has none since buster).
py36=""
for candidate in ${OLDPY_PY36:-$(command -v python3.6) /root/.pyenv/versions/3.6*/bin/python3.6}; do
    # The first that really is a 3.6 (pyenv's shim on PATH may answer for no version at all).
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 6)' 2>/dev/null; then
        py36=$candidate
        break
    fi
done
venv36=$top/py36
pins36="numpy==1.19.5 openvino==2022.2.0"
if [ -z "$py36" ]; then
    say "no Python 3.6 on this host (set OLDPY_PY36): the 3.6 worker is not built"
    exit 0
fi
if [ -x "$venv36/bin/python" ]; then
    say "Python 3.6 venv: already at $venv36"
else
    say "Python 3.6 venv: $py36 -m venv $venv36"
    "$py36" -m venv "$venv36" || die "$py36 cannot make a venv"
fi
if "$venv36/bin/python" -m pip freeze --isolated 2>/dev/null | grep -qx "openvino==2022.2.0"; then
    say "Python 3.6 packages: already $pins36"
else
    say "pip install $pins36 into $venv36 (pip 21.3.1 first: 3.6's own pip predates manylinux2014)"
    "$venv36/bin/python" -m pip install --isolated --no-cache-dir --disable-pip-version-check "pip==21.3.1" &&
        "$venv36/bin/python" -m pip install --isolated --no-cache-dir --disable-pip-version-check $pins36 ||
        die "pip install into $venv36 failed (is PyPI reachable?)"
fi
"$venv36/bin/python" -c 'import sys, numpy, openvino.runtime as ov; print("  python", sys.version.split()[0], "numpy", numpy.__version__, "openvino", ov.get_version().split("-")[0], "devices", ov.Core().available_devices)' ||
    die "the Python 3.6 venv does not import its runtimes"
say "ready: worker_python = \"$venv36/bin/python\""
