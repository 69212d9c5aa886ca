"""The CDP's input tables: columns and types, the one definition docs/cdp.md describes."""

from __future__ import annotations

import ibis
import pyarrow as pa
import pyarrow.compute as pc

SCHEMAS: dict[str, ibis.Schema] = {
    "memberships": ibis.schema({
        "record_id": "string", "channel": "string", "created_ts": "int64", "is_member": "boolean",
        "member_id": "string", "phone_hash": "string", "unionid": "string", "buyer_id": "string",
        "openid": "string", "external_userid": "string", "store_id": "string"}),
    "membership_devices": ibis.schema({"record_id": "string", "id_type": "int8", "value_md5": "string"}),
    "orders": ibis.schema({
        "order_id": "string", "record_id": "string", "channel": "string", "store_id": "string", "ts": "int64",
        "amount_fen": "int64", "category": "string"}),
    "wecom": ibis.schema({
        "friendship_id": "string", "external_userid": "string", "unionid": "string", "phone_hash": "string",
        "guide_id": "string", "store_id": "string", "added_ts": "int64", "removed_ts": "int64"}),
    "wecom_interactions": ibis.schema({
        "event_id": "string", "external_userid": "string", "guide_id": "string", "type": "string", "ts": "int64",
        "group_id": "string"}),
    "stores": ibis.schema({
        "store_id": "string", "region": "string", "city": "string", "lat": "float64", "lon": "float64",
        "opened_ts": "int64"}),
}
# Tables an input directory may lack (older worlds): read as empty, and the run says so.
OPTIONAL_TABLES = ("wecom_interactions", "stores")
# Columns added after the first version of a table: when the file lacks them they are read as all null
# (and the run says so). Every other column must be present, so a misspelt header is an error, not nulls.
OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {"memberships": ("openid", "external_userid", "store_id")}
INTERACTION_TYPES = ("friend_add", "friend_remove", "chat", "group_join", "group_leave")

# The columns that carry identifiers (cdp.identity links records by them; WeCom events attach by
# external_userid), and those of them holding hex digests. Ingest normalises them once (`normalize`: by
# cdp.validate for every input file, by cdp.ingest.register for in-memory frames), so the engine compares
# values as they are.
NORMALIZED_COLUMNS: dict[str, tuple[str, ...]] = {
    "memberships": ("member_id", "phone_hash", "unionid", "buyer_id", "openid", "external_userid"),
    "wecom": ("external_userid", "unionid", "phone_hash"),
    "membership_devices": ("value_md5",),
    "wecom_interactions": ("external_userid",),
}
LOWERED_COLUMNS = frozenset({"phone_hash", "value_md5"})  # hex digests: case carries no meaning


def normalize(table: str, column: str, values: pa.Array) -> pa.Array:
    """An input column as the engine reads it: an identifier column (NORMALIZED_COLUMNS) without leading
    and trailing whitespace, lower-cased when it holds hex digests (LOWERED_COLUMNS); others unchanged."""
    if column not in NORMALIZED_COLUMNS.get(table, ()) or not pa.types.is_string(values.type):
        return values
    values = pc.utf8_trim_whitespace(values)
    return pc.utf8_lower(values) if column in LOWERED_COLUMNS else values
