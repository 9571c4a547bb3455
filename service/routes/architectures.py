"""``GET /architectures``: the generators this deployment serves and its request limits."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import GatewayDep, OwnerDep
from service.schemas import ArchitectureList

__all__ = ["router"]

router = APIRouter(tags=["architectures"])


@router.get("/architectures", response_model=ArchitectureList)
def list_architectures(gateway: GatewayDep, _owner: OwnerDep) -> ArchitectureList:
    """Each generator: name, target parameter count, condition spec, defaults, zoo accuracy."""
    settings = gateway.settings
    return ArchitectureList.model_validate(
        {
            "architectures": [
                gateway.catalog.generators[name].public() for name in gateway.catalog.names()
            ],
            "limits": {
                "max_num_samples": settings.max_num_samples,
                "max_steps": settings.max_steps,
                "max_body_bytes": settings.max_body_bytes,
                "rate_limit_per_minute": settings.rate_limit_per_minute,
            },
        }
    )
