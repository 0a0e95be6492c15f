"""The catalog: which names exist on this daemon and which tenant owns each.

Models and pipelines share one namespace of names (``infer`` takes either). The catalog holds the
store's rows for the request path (no database read per request) and answers the ownership
questions every operation asks: is there a tenant, is this name theirs, is it free. The store is
the durable truth; the catalog is changed only after the store has committed.
"""

from __future__ import annotations

from typing import Any

from tenantd.errors import BadRequest, Forbidden, NameTaken, NotOwner, UnknownModel
from tenantd.pipelinespec import PipelineSpec
from tenantd.store import ModelRecord
from tenantwire.protocol import NAME_RE, Request


def require_tenant(request: Request) -> str:
    """The tenant ``request`` acts for; FORBIDDEN without one, BAD_REQUEST for an invalid name."""
    tenant = request.tenant
    if tenant is None:
        raise Forbidden(f"operation {request.op!r} needs a tenant in the header")
    if not NAME_RE.fullmatch(tenant):
        raise BadRequest(f"tenant name {tenant!r} is not valid ({NAME_RE.pattern})")
    return tenant


def is_operator_acting(request: Request) -> bool:
    """The operator, acting for no tenant in particular (may remove any tenant's things)."""
    return request.operator and request.tenant is None


class Catalog:
    def __init__(self) -> None:
        self.models: dict[str, ModelRecord] = {}
        # Pipelines by name: (owner, spec).
        self.pipelines: dict[str, tuple[str, PipelineSpec]] = {}

    def model(self, name: Any) -> ModelRecord:
        if not isinstance(name, str) or not name:
            raise BadRequest("args.model must name a model")
        record = self.models.get(name)
        if record is None:
            raise UnknownModel(f"no model named {name!r}")
        return record

    def owned_model(self, tenant: str, name: Any) -> ModelRecord:
        record = self.model(name)
        if record.owner != tenant:
            raise NotOwner(f"model {record.name!r} belongs to another tenant")
        return record

    def pipeline(self, name: Any, tenant: str | None) -> tuple[str, PipelineSpec]:
        """The pipeline ``name`` as (owner, spec); ``tenant`` None for the operator."""
        entry = self.pipelines.get(name) if isinstance(name, str) else None
        if entry is None:
            raise UnknownModel(f"no pipeline named {name!r}")
        if tenant is not None and entry[0] != tenant:
            raise NotOwner(f"pipeline {name!r} belongs to another tenant")
        return entry

    def check_name_free(self, name: str, tenant: str, replace: bool) -> None:
        """A model name may be taken by the same tenant only to replace its model."""
        if name in self.pipelines:
            raise NameTaken(f"a pipeline named {name!r} exists (models and pipelines share names)")
        existing = self.models.get(name)
        if existing is not None and existing.owner != tenant:
            raise NotOwner(f"model name {name!r} belongs to another tenant")
        if existing is not None and not replace:
            # Said in no one client's words: the library's replace=True is tenantctl's --replace.
            raise NameTaken(f"you already have a model named {name!r} (a submission that asks to replace it may)")

    def tenant_models(self, tenant: str, besides: str = "") -> list[ModelRecord]:
        return [r for r in self.models.values() if r.owner == tenant and r.name != besides]

    def tenants(self) -> list[str]:
        return sorted({r.owner for r in self.models.values()})
