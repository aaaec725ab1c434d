"""Point ids (stable UUIDs from product ids) and the payload each product is stored with."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

RESERVED = ("cluster", "product_id", "text", "image", "content_hash", "payload_hash")
_NAMESPACE = uuid.UUID("6b0e3f8e-5c55-4d6a-9a43-6f2d1f7c2a10")


def point_id(product_id: str) -> str:
    """Stable Qdrant point id for a catalog id, so re-indexing updates instead of duplicating."""
    return str(uuid.uuid5(_NAMESPACE, str(product_id)))


def product_payload(product: Any) -> dict[str, Any]:
    """Catalog fields (renamed `catalog_<name>` if they clash with ours) plus our own keys, without cluster."""
    payload = {(f"catalog_{k}" if k in RESERVED else k): v for k, v in product.fields.items()}
    payload |= {"product_id": product.id, "text": product.text, "image": product.image_rel,
                "content_hash": product.content_hash}
    payload["payload_hash"] = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return payload
