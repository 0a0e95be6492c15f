"""The service files in packaging/: the systemd unit (checked by `systemd-analyze verify` where
systemd is installed, and for the properties the README promises) and the Containerfile (no
hadolint or container engine here: its key properties are read from the file)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging/tenantd.service"
CONTAINERFILE = ROOT / "packaging/Containerfile"


def directives(path: Path) -> dict[str, list[str]]:
    """``Key`` -> its values in order (a unit may repeat a key), comments and sections left out."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_unit_is_a_hardened_notify_service() -> None:
    unit = directives(UNIT)
    assert unit["Type"] == ["notify"] and unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["ExecStart"] == ["/opt/tenantd/bin/tenantd serve"]  # no paths: the defaults come from below
    assert unit["User"] == ["tenantd"] and unit["CapabilityBoundingSet"] == [""]
    assert unit["ProtectSystem"] == ["strict"] and unit["PrivateTmp"] == ["yes"] and unit["NoNewPrivileges"] == ["yes"]
    for kind in ("ConfigurationDirectory", "StateDirectory", "RuntimeDirectory"):
        assert unit[kind] == ["tenantd"]
    assert unit["DevicePolicy"] == ["closed"]
    allowed = " ".join(unit["DeviceAllow"])
    for device in ("/dev/apex_0", "char-usb_device", "/dev/nvhost-ctrl-gpu", "/dev/nvmap"):
        assert device in allowed
    # Every device line has its reason in a comment just above it (or above its group).
    text = UNIT.read_text().splitlines()
    grants = [i for i, line in enumerate(text) if line.startswith("DeviceAllow")]
    firsts = [i for i in grants if not text[i - 1].startswith("DeviceAllow")]
    assert all(text[i - 1].startswith("#") for i in firsts)
    assert "2 3" in unit["RestartPreventExitStatus"]  # tenantd serve's config and store exits


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this interpreter's tenantd.
    tenantd = Path(sys.executable).parent / "tenantd"
    if not tenantd.exists():
        pytest.skip(f"no tenantd executable beside {sys.executable}")
    copy = tmp_path / "tenantd.service"
    text = UNIT.read_text().replace("/opt/tenantd/bin/tenantd", str(tenantd))
    copy.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and (result.stdout + result.stderr).strip() == ""
    # ... and the check is one that can fail: a misspelled directive is reported.
    copy.write_text(text.replace("ProtectSystem=strict", "ProtectSystem=strictest"))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=120)
    assert "strictest" in result.stdout + result.stderr


def test_the_containerfile_runs_the_daemon_unprivileged_with_state_on_a_volume() -> None:
    text = CONTAINERFILE.read_text()
    instructions = [line for line in text.replace("\\\n", " ").splitlines() if line and not line.startswith("#")]
    final = instructions[max(i for i, line in enumerate(instructions) if line.startswith("FROM")) :]
    (user,) = [line.split()[1] for line in final if line.startswith("USER ")]
    assert user == "tenantd"
    assert any(line.startswith("VOLUME") and "/var/lib/tenantd" in line for line in final)
    assert 'ENTRYPOINT ["tenantd"]' in final and 'CMD ["serve"]' in final
    env = " ".join(line for line in final if line.startswith("ENV"))
    for setting in ("TENANTD_STATE_DIR=/var/lib/tenantd", "TENANTD_POLICY=/etc/tenantd/policy.toml"):
        assert setting in env
    assert re.search(r"useradd --system .*tenantd", text)
    assert "ARG EXTRAS" in text and "ARG EDGETPU" in text  # a build argument per device family
    # What it copies exists.
    for line in instructions:
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source


@pytest.mark.slow
def test_the_wheel_ships_every_module_and_the_example_policies(tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves build/ and an egg-info beside the sources it builds.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("tenantd", "clients", "policies"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("tenantd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    # Every module of the daemon and the client is in it (tenantd.frontdoors was once left out).
    for folder, package in (
        ("tenantd", "tenantd"),
        ("clients/tenantwire", "tenantwire"),
        ("clients/tenantclient", "tenantclient"),
    ):
        for module in (ROOT / folder).rglob("*.py"):
            assert f"{package}/{module.relative_to(ROOT / folder).as_posix()}" in names
    shipped = {Path(n).name for n in names if n.startswith("tenantd/policies/")}
    assert shipped == {p.name for p in (ROOT / "policies").glob("*.toml")}
