"""What a pipeline and an uplink are: the validated definitions shared by the policy and the catalog.

An uplink (``[uplinks.NAME]`` in the operator's policy) says how this daemon reaches another one;
a pipeline spec (a tenant's ``pipeline_set``) chains a model here to a model there through an
uplink. :mod:`tenantd.pipelines` runs them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tenantwire.tensors import TensorEncoding


class Uplink(BaseModel):
    """``[uplinks.NAME]`` in the policy: how this daemon reaches another daemon."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    endpoint: str
    """The other daemon's endpoint, e.g. ``tcp://cloud.example:5555`` (or a relay in front of it)."""

    tenant: str | None = None
    """The tenant this daemon acts as there, when that daemon takes header identities (ipc://)."""

    key_file: str | None = None
    """This daemon's secret certificate issued by the other daemon's operator (CurveZMQ)."""

    server_key: str | None = None
    """The other daemon's public key: a file (keys/server.key there) or the z85 text."""

    timeout_ms: Annotated[float, Field(gt=0)] = 5000.0
    """Longest wait for the other daemon's answer; a pipeline may ask for less."""

    tenants: list[str] | None = None
    """Tenants whose pipelines may use this uplink (default: every tenant). All of them act as
    this daemon's one identity on the other daemon, and so share its models and quotas there."""

    def allows(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    @model_validator(mode="after")
    def _identity(self) -> Uplink:
        if (self.key_file is None) != (self.server_key is None):
            raise ValueError("an uplink with keys needs both key_file and server_key")
        if self.key_file is None and self.tenant is None:
            raise ValueError("an uplink needs an identity: key_file + server_key, or tenant")
        if not self.endpoint.startswith(("tcp://", "ipc://")):
            raise ValueError(f"uplink endpoint {self.endpoint!r} must be tcp:// or ipc://")
        return self


class PipelineSpec(BaseModel):
    """What a tenant asks for in ``pipeline_set`` (the wire form is this model's fields)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    kind: Literal["split", "cascade"]
    edge_model: str
    """A model of the same tenant on this daemon: the head (split) or the compact model (cascade)."""

    uplink: str
    """An uplink the operator configured (``[uplinks.NAME]``)."""

    cloud_model: str
    """The model's name on the other daemon, owned there by this daemon's identity."""

    encoding: str = "none"
    """How tensors travel up: none, zlib, lz4, float16, int8, or a lossy step + a codec
    (e.g. ``int8+zlib``). See docs/protocol.md, tensor encodings."""

    threshold: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    """cascade: forward to the cloud when the edge's top confidence is below this."""

    confidence_output: str | None = None
    """cascade: the edge output holding class scores (default: its first output)."""

    forward_classes: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    """cascade: classes whose edge answers always go to the cloud, however confident (e.g. the
    "other" class of a compact model trained only for a few frequent classes)."""

    on_cloud_failure: Literal["error", "edge"] = "error"
    """cascade: ``edge`` answers with the edge result, flagged, when the cloud fails."""

    timeout_ms: Annotated[float | None, Field(gt=0)] = None
    """Longest wait for the cloud (default: the uplink's timeout_ms)."""

    @model_validator(mode="after")
    def _shape(self) -> PipelineSpec:
        TensorEncoding.parse(self.encoding)  # raises ValueError with the accepted forms
        if self.kind == "cascade" and self.threshold is None:
            raise ValueError("a cascade needs a threshold (forward when the top confidence is below it)")
        if self.kind == "split" and (
            self.threshold is not None or self.on_cloud_failure != "error" or self.forward_classes
        ):
            raise ValueError("a split has no edge answer to fall back on: threshold/on_cloud_failure are for cascades")
        return self

    @property
    def tensor_encoding(self) -> TensorEncoding | None:
        return TensorEncoding.parse(self.encoding)


def parse_spec(args: dict[str, Any]) -> PipelineSpec:
    try:
        return PipelineSpec.model_validate(args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"pipeline spec is not valid: {problems}") from None
