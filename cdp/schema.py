"""The CDP's input tables: columns and types, the one definition docs/specs/cdp-input.md describes."""

from __future__ import annotations

import ibis

SCHEMAS: dict[str, ibis.Schema] = {
    "memberships": ibis.schema({
        "record_id": "string", "channel": "string", "created_ts": "int64", "is_member": "boolean",
        "member_id": "string", "phone_hash": "string", "unionid": "string", "buyer_id": "string"}),
    "membership_devices": ibis.schema({"record_id": "string", "id_type": "int8", "value_md5": "string"}),
    "orders": ibis.schema({
        "order_id": "string", "record_id": "string", "channel": "string", "store_id": "string", "ts": "int64",
        "amount_fen": "int64", "category": "string"}),
    "wecom": ibis.schema({
        "friendship_id": "string", "external_userid": "string", "unionid": "string", "phone_hash": "string",
        "guide_id": "string", "store_id": "string", "added_ts": "int64", "removed_ts": "int64"}),
}
