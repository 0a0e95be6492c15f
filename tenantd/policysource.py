"""Which policy is in force: the operator's policy file, or a policy set at run time that is
stored with the state so that it survives a restart.

The policy file is the base. ``policy_set`` (``tenantctl policy set FILE``) stores the new policy
as ``STATE_DIR/policy.override.toml`` (written atomically, before it is applied) together with the
fingerprint of the base policy it was set over. At start-up and on SIGHUP the daemon reads the
policy file again, and:

* if the file still says the same policy as when the override was set (comments and layout do
  not count), the override stays in force: a restart or a reload keeps what was set at run time;
* if the file says another policy now (the operator edited it), the file wins and the override is
  set aside as ``policy.override.toml.dropped``: the operator's latest word wins either way.

Setting a policy equal to the file's clears the override (so ``tenantctl policy set`` with the
policy file itself goes back to the file); so does deleting the override file and sending SIGHUP.
The daemon never writes the policy file: it belongs to the operator (and, as a service, to root).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tenantd.config import RESTART_ONLY, ConfigError, Policy, load_policy, parse_policy

log = logging.getLogger("tenantd")

OVERRIDE_FILE = "policy.override.toml"
_BASE_LINE = "# base-policy-sha256 = "
_HEADER = """\
# tenantd: the policy set at run time ('tenantctl policy set'). It is in force instead of the
# policy file for as long as that file says the same policy as when this was set; edit the file,
# or set the file's policy again, to go back to it. Written by tenantd: do not edit.
"""


def fingerprint(policy: Policy) -> str:
    """What a policy says, not how its file is laid out."""
    canonical = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Resolved:
    policy: Policy
    source: str  # "file" (the policy file, or the defaults without one) or "runtime" (the override)
    stale_override: bool  # an override exists that the file has moved past: set it aside on commit


class PolicySource:
    def __init__(self, state_dir: Path, policy_file: Path | None, base: Policy, optional: bool = False) -> None:
        self.override_path = state_dir / OVERRIDE_FILE
        self.policy_file = policy_file
        self.optional = optional  # a missing policy file means every default (the default path)
        self.base = base  # the policy file's policy, as last read

    def read_file(self) -> Policy:
        """Read the policy file again (SIGHUP); without one the base stays what it was."""
        if self.policy_file is None:
            return self.base
        if self.optional and not self.policy_file.exists():
            return Policy()
        return load_policy(self.policy_file)

    def resolve(self, base: Policy | None = None) -> Resolved:
        """The policy that should be in force over ``base`` (default: the base as last read)."""
        base = self.base if base is None else base
        try:
            text = self.override_path.read_text()
        except FileNotFoundError:
            return Resolved(base, "file", False)
        except OSError as exc:
            log.error("cannot read the runtime policy %s (%s): the policy file is in force", self.override_path, exc)
            return Resolved(base, "file", False)
        recorded = next((ln[len(_BASE_LINE) :].strip() for ln in text.splitlines() if ln.startswith(_BASE_LINE)), None)
        if recorded != fingerprint(base):
            log.warning(
                "the policy file says another policy than when a policy was set at run time: the file wins, "
                "and the runtime policy is set aside as %s.dropped",
                self.override_path,
            )
            return Resolved(base, "file", True)
        try:
            override = parse_policy(text, str(self.override_path))
        except ConfigError as exc:
            log.error("%s; the policy file is in force", exc)
            return Resolved(base, "file", True)
        fixed = [f for f in RESTART_ONLY if getattr(override, f) != getattr(base, f)]
        if fixed:
            log.error("%s changes %s, which only the policy file may: the file is in force", self.override_path, fixed)
            return Resolved(base, "file", True)
        return Resolved(override, "runtime", False)

    def commit(self, resolved: Resolved, base: Policy) -> None:
        """Make ``resolved`` (from :meth:`resolve` over ``base``) the state: base read, stale override aside."""
        self.base = base
        if resolved.stale_override:
            try:
                os.replace(self.override_path, self.override_path.with_name(OVERRIDE_FILE + ".dropped"))
            except OSError as exc:
                log.error("cannot set the stale runtime policy %s aside: %s", self.override_path, exc)

    def store(self, text: str, policy: Policy) -> str:
        """Make ``policy`` (whose TOML is ``text``) survive restarts; returns its source. Raises
        OSError when it cannot be written: then it must not be applied either."""
        if fingerprint(policy) == fingerprint(self.base):
            self.override_path.unlink(missing_ok=True)  # the file's own policy: nothing to override
            _sync_dir(self.override_path.parent)
            return "file"
        tmp = self.override_path.with_name(OVERRIDE_FILE + ".tmp")
        with tmp.open("w") as f:
            f.write(f"{_HEADER}{_BASE_LINE}{fingerprint(self.base)}\n\n{text}")
            if not text.endswith("\n"):
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.override_path)
        _sync_dir(self.override_path.parent)
        return "runtime"


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
