"""OneID: deterministic identity resolution by union-find over shared identifiers.

Every record (a channel account or a WeCom friendship) is a node; two records are one person when
they share a usable identifier, directly or through a chain. Identifiers are namespaced by kind
(`phone:`, `member:`, `unionid:`, `wecom:`, `buyer:{channel}:`, `dev:{code}:`) so equal strings of
different kinds never link. Junk values (BLOCKED_VALUES, all-zero strings, malformed device MD5s)
never link anyone. A cluster's OneID is a hash of its earliest identifier (ties: the smallest key),
so it does not depend on input order and survives later records joining the cluster.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rta_service import keyspace
from rta_service.ids import BUILTIN_DOUBTFUL

BLOCKED_VALUES = frozenset({
    "", "0", "-1", "null", "none", "nan", "nil", "undefined", "unknown", "n/a", "na",
    hashlib.md5(b"0").hexdigest(), hashlib.md5(b"null").hexdigest(),
} | BUILTIN_DOUBTFUL)
_ZERO_LIKE = r"[0\-_.:\s]*"  # "0000", "00000000-0000-0000-0000-000000000000", ...
_HEX32 = r"[0-9a-f]{32}"
# (table, column) -> identifier kind; buyer ids are only meaningful inside their channel.
IDENTIFIER_COLUMNS = {
    "memberships": {"member_id": "member", "phone_hash": "phone", "unionid": "unionid", "buyer_id": "buyer"},
    "wecom": {"external_userid": "wecom", "unionid": "unionid", "phone_hash": "phone"},
}
_LOWER_KINDS = {"phone"}
ONE_ID_PREFIX = b"rta-oneid-v1:"


def str_isin(values: pd.Series, allowed) -> np.ndarray:
    """values.isin(allowed) for string columns; pandas 3's own isin is slow for large `allowed`."""
    column = pa.array(values.to_numpy(dtype=object), type=pa.string(), from_pandas=True)
    wanted = pa.array(pd.unique(np.asarray(allowed, dtype=object)), type=pa.string(), from_pandas=True)
    return pc.fill_null(pc.is_in(column, value_set=wanted), False).to_numpy(zero_copy_only=False)


def usable(values: pd.Series) -> np.ndarray:
    """True where a (stripped, lower-cased) value may link records."""
    text = values.astype("str").str.strip().str.lower()
    junk = values.isna() | text.isin(BLOCKED_VALUES) | text.str.fullmatch(_ZERO_LIKE)
    return ~junk.to_numpy(dtype=bool)


def records_and_edges(tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(records[table, record_id, ts], edges[node, ts, key]); node indexes records."""
    members, wecom = tables["memberships"], tables["wecom"]
    records = pd.concat([
        pd.DataFrame({"table": "memberships", "record_id": members["record_id"], "ts": members["created_ts"]}),
        pd.DataFrame({"table": "wecom", "record_id": wecom["friendship_id"], "ts": wecom["added_ts"]}),
    ], ignore_index=True)
    node_of = {"memberships": np.arange(len(members)), "wecom": len(members) + np.arange(len(wecom))}
    edges = []
    for table, columns in IDENTIFIER_COLUMNS.items():
        frame = tables[table]
        for column, kind in columns.items():
            values = frame[column]
            ok = usable(values)
            text = values[ok].astype("str").str.strip()
            if kind in _LOWER_KINDS:
                text = text.str.lower()
            prefix = f"{kind}:" if kind != "buyer" else "buyer:" + frame.loc[ok, "channel"].astype("str") + ":"
            edges.append(pd.DataFrame({"node": node_of[table][ok], "key": prefix + text}))
    devices = tables["membership_devices"]
    md5 = devices["value_md5"].astype("str").str.strip().str.lower()
    ok = usable(devices["value_md5"]) & md5.str.fullmatch(_HEX32).to_numpy(dtype=bool)
    ok &= devices["id_type"].isin(list(keyspace.TYPE_CODES)).to_numpy()
    node = pd.Series(node_of["memberships"], index=members["record_id"].to_numpy())
    node = node.reindex(devices.loc[ok, "record_id"].to_numpy())
    codes = devices.loc[ok, "id_type"].map(keyspace.TYPE_CODES)
    dev = pd.DataFrame({"node": node.to_numpy(), "key": ("dev:" + codes + ":" + md5[ok]).to_numpy()}).dropna()
    edges.append(dev.astype({"node": np.int64}))
    edges = pd.concat(edges, ignore_index=True)
    edges["ts"] = records["ts"].to_numpy()[edges["node"].to_numpy()]
    return records, edges


def connected_labels(n_nodes: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Union-find, vectorised: hook each edge's roots to the smaller one, compress paths, repeat.

    Returns, per node, the smallest node of its connected component.
    """
    parent = np.arange(n_nodes)
    while True:
        pu, pv = parent[u], parent[v]
        if np.array_equal(pu, pv):
            return parent
        low = np.minimum(pu, pv)
        np.minimum.at(parent, pu, low)
        np.minimum.at(parent, pv, low)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def one_id(key: str) -> str:
    return hashlib.sha256(ONE_ID_PREFIX + key.encode()).hexdigest()[:24]


def resolve(tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(records[table, record_id, one_id], identifiers[key, one_id]) for the given tables."""
    records, edges = records_and_edges(tables)
    key_codes, keys = pd.factorize(edges["key"])
    n_records = len(records)
    labels = connected_labels(n_records + len(keys), edges["node"].to_numpy(), n_records + key_codes)
    edges["cluster"] = labels[edges["node"].to_numpy()]
    records["cluster"] = labels[:n_records]
    lonely = ~records["cluster"].isin(edges["cluster"])
    extra = records.loc[lonely, ["cluster", "ts"]].assign(key="record:" + records["table"] + ":" + records["record_id"])
    first = pd.concat([edges[["cluster", "ts", "key"]], extra], ignore_index=True)
    first = first.sort_values(["cluster", "ts", "key"]).drop_duplicates("cluster")
    oid = pd.Series([one_id(k) for k in first["key"]], index=first["cluster"].to_numpy())
    records["one_id"] = oid.reindex(records["cluster"].to_numpy()).to_numpy()
    identifiers = edges.drop_duplicates("key")[["key", "cluster"]]
    identifiers = identifiers.assign(one_id=oid.reindex(identifiers["cluster"].to_numpy()).to_numpy())
    return records[["table", "record_id", "one_id"]], identifiers[["key", "one_id"]].reset_index(drop=True)
