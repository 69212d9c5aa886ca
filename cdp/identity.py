"""OneID: deterministic identity resolution by iterative label propagation, written once in Ibis.

Every record (a channel account or a WeCom friendship) is a node; two records are one person when
they share a usable identifier, directly or through a chain. Identifiers are namespaced by kind
(`phone:`, `member:`, `unionid:`, `wecom:`, `buyer:{channel}:`, `dev:{code}:`) so equal strings of
different kinds never link. Junk values (BLOCKED_VALUES, all-zero strings, malformed device MD5s)
never link anyone.

Clustering is min-label propagation over the bipartite record-identifier graph: each round, every
identifier takes the smallest label of its records, every record the smallest label of its
identifiers, then labels jump to their label's label (pointer jumping, so long chains converge in
log rounds). Each round is a few joins and group-bys materialised with `engine.materialize`: no recursive
SQL, so it runs the same on DuckDB and Spark. A cluster's OneID is a hash of its earliest identifier
(ties: the smallest key), so it does not depend on input order and survives later records joining.
Given the last run's [key, one_id] map (`previous`), a cluster instead inherits the previous OneID most
of its identifiers held, so backfilled older records, merges and splits do not rename people (inherit()).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rta_service import keyspace
from rta_service.ids import BUILTIN_DOUBTFUL

from . import engine, ingest
from .engine import materialize, release

log = logging.getLogger(__name__)

BLOCKED_VALUES = frozenset({
    "", "0", "-1", "null", "none", "nan", "nil", "undefined", "unknown", "n/a", "na",
    hashlib.md5(b"").hexdigest(), hashlib.md5(b"0").hexdigest(), hashlib.md5(b"null").hexdigest(),
} | BUILTIN_DOUBTFUL)
ZERO_LIKE = r"^[0\-_.:\s]*$"  # "0000", "00000000-0000-0000-0000-000000000000", ...
HEX32 = r"^[0-9a-f]{32}$"
# (table, column) -> identifier kind; buyer ids and WeChat openids (one per app) are only meaningful
# inside their channel. A member's external_userid is the WeCom friendship's id (kind "wecom").
IDENTIFIER_COLUMNS = {
    "memberships": {"member_id": "member", "phone_hash": "phone", "unionid": "unionid", "buyer_id": "buyer",
                    "openid": "openid", "external_userid": "wecom"},
    "wecom": {"external_userid": "wecom", "unionid": "unionid", "phone_hash": "phone"},
}
RECORD_ID = {"memberships": "record_id", "wecom": "friendship_id"}
RECORD_TS = {"memberships": "created_ts", "wecom": "added_ts"}
NODE_PREFIX = {"memberships": "m:", "wecom": "w:"}
_PER_CHANNEL_KINDS = {"buyer", "openid"}
ONE_ID_PREFIX = "rta-oneid-v1:"
MAX_ROUNDS = 64


class ClusterTooLarge(RuntimeError):
    """A cluster grew past the configured size: almost always a junk identifier shared by strangers."""


SHARED_SHOWN = 3  # identifier values ClusterTooLarge names


# "dev" caps each device ID type (IMEI, OAID, IDFA, ...) separately.
DEFAULT_CAPS = (("phone", 2), ("unionid", 2), ("member", 6), ("wecom", 8), ("buyer", 6), ("openid", 6), ("dev", 6))


@dataclass(frozen=True)
class Guardrails:
    max_cluster_size: int = 200  # records; a real person has a handful of accounts
    # Most distinct values of an identifier kind one person may hold. Past it, the person's values of
    # that kind are ranked (more records first, then the earliest, then the smallest) and the excess
    # ones stop linking anyone; clustering then runs once more without them.
    caps: tuple[tuple[str, int], ...] = DEFAULT_CAPS

    # identifier keys (`kind:value`, as edges() builds them) that never link anyone, like BLOCKED_VALUES
    blocked: tuple[str, ...] = ()

    def check(self, sizes: ir.Table, ids: ir.Table, e: ir.Table) -> None:
        """Raise ClusterTooLarge naming the values most shared within the largest cluster past
        max_cluster_size, from sizes [one_id, size], the identifiers [key, one_id] and edges [node, key]."""
        biggest = sizes.order_by([ibis.desc("size"), "one_id"]).limit(3).to_pyarrow().to_pylist()
        if not biggest or biggest[0]["size"] <= self.max_cluster_size:
            return
        keys = ids.filter(ids.one_id == biggest[0]["one_id"]).select("key")
        held = e.join(keys, "key", how="semi").select("key", "node").distinct()
        shared = held.group_by("key").agg(n=ibis._.count()).filter(ibis._.n > 1).order_by([ibis.desc("n"), "key"])
        top = shared.limit(SHARED_SHOWN).to_pyarrow().to_pylist()
        named = ", ".join(f"{r['key']!r} (held by {r['n']} records)" for r in top)
        raise ClusterTooLarge(f"a cluster of {biggest[0]['size']} records exceeds max_cluster_size "
                              f"{self.max_cluster_size} (largest: {[b['size'] for b in biggest]}); its most "
                              f"shared identifier values: {named}; if one is junk, add it to "
                              "blocked_identifiers")


DEFAULT_GUARDRAILS = Guardrails()


def str_isin(values: pd.Series, allowed) -> np.ndarray:
    """values.isin(allowed) for string columns; pandas 3's own isin is slow for large `allowed`."""
    column = pa.array(values.to_numpy(dtype=object), type=pa.string(), from_pandas=True)
    wanted = pa.array(pd.unique(np.asarray(allowed, dtype=object)), type=pa.string(), from_pandas=True)
    return pc.fill_null(pc.is_in(column, value_set=wanted), False).to_numpy(zero_copy_only=False)


def usable(value: ir.StringValue) -> ir.BooleanValue:
    """True where a (normalized) value may link records: present, not a blocked value, not all zeros."""
    text = value.lower()
    return value.notnull() & text.notin(sorted(BLOCKED_VALUES)) & ~text.re_search(ZERO_LIKE)


def _node(table: str, t: ir.Table) -> ir.StringValue:
    return ibis.literal(NODE_PREFIX[table]) + t[RECORD_ID[table]]


def records(tables: dict[str, ir.Table]) -> ir.Table:
    """[node, table, record_id, ts]: every record that takes part in resolution."""
    parts = [t.select(node=_node(name, t), table=ibis.literal(name), record_id=t[RECORD_ID[name]],
                      ts=t[RECORD_TS[name]].cast("int64"))
             for name, t in ((n, tables[n]) for n in RECORD_ID)]
    return parts[0].union(parts[1])


def edges(tables: dict[str, ir.Table], blocked: tuple[str, ...] = ()) -> ir.Table:
    """[node, key, kind, ts]: a row per usable (record, identifier) pair (more if input rows repeat); kind is
    the key's cap kind (`phone`, ..., `dev:{code}`). Keys in `blocked` are not usable."""
    parts = []
    for name, columns in IDENTIFIER_COLUMNS.items():
        t = tables[name]
        for column, kind in columns.items():
            value = t[column]
            prefix = ibis.literal(f"{kind}:") if kind not in _PER_CHANNEL_KINDS else f"{kind}:" + t["channel"] + ":"
            parts.append(t.filter(usable(t[column])).select(node=_node(name, t), key=prefix + value,
                                                            kind=ibis.literal(kind),
                                                            ts=t[RECORD_TS[name]].cast("int64")))
    m, d = tables["memberships"], tables["membership_devices"]
    md5 = d["value_md5"]
    code = d["id_type"].cases(*keyspace.TYPE_CODES.items())
    dev = d.filter(usable(d["value_md5"]), md5.re_search(HEX32), code.notnull())
    dev = dev.select(record_id=dev["record_id"], key="dev:" + code + ":" + md5, kind="dev:" + code)
    dev = dev.join(m.select("record_id", ts=m["created_ts"].cast("int64")), "record_id")
    parts.append(dev.select(node=_node("memberships", dev), key=dev["key"], kind=dev["kind"], ts=dev["ts"]))
    out = parts[0]
    for part in parts[1:]:
        out = out.union(part, distinct=False)
    if blocked:
        out = out.filter(out.key.notin(sorted(set(blocked))))
    return out  # a repeated input row repeats its edges: _clusters counts records, not rows


def propagate(graph: ir.Table, max_rounds: int = MAX_ROUNDS) -> tuple[ir.Table, int]:
    """([node, label], rounds): label = the smallest node of each connected component of `graph`
    (a [node, key] bipartite edge list, integer nodes). Only nodes with at least one edge appear."""
    pairs = graph.select("node", "key").pipe(materialize)
    labels = pairs.select("node").distinct().mutate(label=ibis._.node).pipe(materialize)
    # A node's label never grows (the min over its keys includes its own, the jump takes the smaller), and
    # every round labels the same nodes, so the labels changed exactly when their sum did: one scan of the
    # new labels per round instead of a join with the old ones.
    total = _label_sum(labels)
    for rounds in range(1, max_rounds + 1):
        by_key = pairs.join(labels, "node").group_by("key").agg(label=ibis._.label.min())
        hop = pairs.join(by_key, "key").group_by("node").agg(label=ibis._.label.min())
        parent = hop.select(label_node="node", parent=ibis._.label)
        jumped = hop.join(parent, hop.label == parent.label_node)
        new = jumped.select("node", label=ibis.least(jumped.label, jumped.parent)).pipe(materialize)
        release(labels)
        labels, before, total = new, total, _label_sum(new)
        if total == before:
            release(pairs)
            return labels, rounds
    raise RuntimeError(f"label propagation did not converge in {max_rounds} rounds")


def _label_sum(labels: ir.Table) -> int:
    return int(labels.label.sum().to_pyarrow().as_py() or 0)


def over_cap(keys: ir.Table, caps: dict[str, int], e: ir.Table) -> ir.Table:
    """[key]: identifier values beyond their kind's cap within their cluster (see Guardrails.caps), from
    _clusters()'s keys [key, kind, label, ts] and the edges [node, key, ...] they came from."""
    caps = {**{k: v for k, v in caps.items() if k != "dev"},
            **({f"dev:{code}": caps["dev"] for code in keyspace.CODE_TYPES} if "dev" in caps else {})}
    capped = keys.mutate(cap=keys.kind.cases(*caps.items())).filter(ibis._.cap.notnull())
    # Only (cluster, kind) groups holding more values than the cap need ranking.
    crowded = capped.group_by(["label", "kind"]).agg(m=ibis._.count(), cap=ibis._.cap.min())
    crowded = crowded.filter(crowded.m > crowded.cap).select("label", "kind")
    ranked = capped.join(crowded, ["label", "kind"], how="semi")
    # n: the records holding each value (counted for these few only; a repeated input row is one record)
    held = e.join(ranked.select("key"), "key", how="semi").select("key", "node").distinct()
    ranked = ranked.join(held.group_by("key").agg(n=ibis._.count()), "key")
    rank = ibis.row_number().over(group_by=["label", "kind"], order_by=[ibis.desc("n"), "ts", "key"])
    return ranked.mutate(rank=rank).filter(ibis._.rank >= ibis._.cap).select("key")


def _clusters(e: ir.Table, first: ir.IntegerValue | int = 0) -> tuple[ir.Table, ir.Table, int]:
    """(nodes [node, nid, first_key, label], keys [key, kind, label, ts], rounds) for edges [node, key, kind, ts];
    nids count from `first`.

    Nodes are numbered (nid) in the order of their earliest identifier (ts, then key, then node), so the
    smallest nid of a component, the label min-label propagation converges to, is the node holding the
    component's earliest identifier: its first_key names the cluster. Propagation runs on integers, and only
    over identifiers held by two or more records (most are held by one and connect nothing), each turned
    into a star on its smallest node; every other node is its own label.
    """
    per_node = e.group_by("node").agg(ts=ibis._.ts.min(), first_key=ibis._.key.min())
    order = ibis.row_number().over(order_by=["ts", "first_key", "node"]) + first
    nodes = per_node.mutate(nid=order).select("node", "nid", "first_key").pipe(materialize)
    held = e.join(nodes.select("node", "nid"), "node")
    # min and max, not a count of distinct holders: DuckDB's COUNT(DISTINCT) per group made this 3x slower
    keys = held.group_by("key").agg(kind=ibis._.kind.arbitrary(), hub=ibis._.nid.min(), last=ibis._.nid.max(),
                                    ts=ibis._.ts.min()).pipe(materialize)
    shared = keys.filter(keys.hub != keys.last).select("key", "hub")
    labels, rounds = propagate(held.join(shared, "key").select(node="nid", key="hub").distinct())
    labelled = nodes.left_join(labels, nodes.nid == labels.node)
    labelled = labelled.select("node", "nid", "first_key", label=ibis.coalesce(labelled.label, labelled.nid))
    labelled = labelled.pipe(materialize)
    roots = labelled.select(hub="nid", label="label")
    keyed = keys.join(roots, "hub").select("key", "kind", "label", "ts").pipe(materialize)
    for done in (nodes, keys, labels):
        release(done)
    return labelled, keyed, rounds


def _recluster(e: ir.Table, nodes: ir.Table, keys: ir.Table, capped: ir.Table) -> tuple[ir.Table, ir.Table, int]:
    """_clusters() again without the `capped` keys, for the clusters that held them only: the others do
    not change. Their nodes are numbered after every existing nid, so labels stay unique."""
    hit = keys.join(capped, "key", how="semi").select("label").distinct().pipe(materialize)
    moved = nodes.join(hit, "label", how="semi").select("node").pipe(materialize)
    sub = e.join(moved, "node", how="semi").join(capped, "key", how="anti")
    sub_nodes, sub_keys, rounds = _clusters(sub, nodes.nid.max().as_scalar() + 1)
    # A node that lost all its identifiers is in neither: it becomes a record of its own.
    cols = ("node", "nid", "first_key", "label")
    all_nodes = nodes.join(moved, "node", how="anti").select(*cols).union(sub_nodes.select(*cols)).pipe(materialize)
    cols = ("key", "kind", "label", "ts")
    all_keys = keys.join(hit, "label", how="anti").select(*cols).union(sub_keys.select(*cols)).pipe(materialize)
    for done in (hit, moved, sub_nodes, sub_keys, nodes, keys):
        release(done)
    return all_nodes, all_keys, rounds


def one_id(key: str) -> str:
    """The OneID of a cluster whose earliest identifier is `key` (same formula as one_id_expr)."""
    return hashlib.sha256((ONE_ID_PREFIX + key).encode()).hexdigest()[:24]


def one_id_expr(key: ir.StringValue) -> ir.StringValue:
    return (ibis.literal(ONE_ID_PREFIX) + key).hexdigest("sha256").substr(0, 24)


# The columns resolve() gives Resolution.records and .identifiers (cdp.tags.tag_schema builds on them).
RECORDS_SCHEMA = ibis.schema({"table": "string", "record_id": "string", "one_id": "string", "component": "int64"})
IDENTIFIERS_SCHEMA = ibis.schema({"key": "string", "one_id": "string"})


@dataclass
class Resolution:
    """The result of resolve(): Ibis tables on the backend the inputs live on."""
    # [table, record_id, one_id, component]: component numbers the connected component of the identity
    # graph before the per-person caps split any (null for a record without usable identifiers). The
    # records of a component are all that a resolution of any subset of them can join, at any cutoff
    # (cdp.predictive samples people by it).
    records: ir.Table
    identifiers: ir.Table  # [key, one_id]
    rounds: int
    sizes: ir.Table  # [one_id, size]: records per OneID
    tags: ir.Table | None = None  # cdp.tags.tag_table, when asked for
    capped: int = 0  # identifier values past their kind's per-person cap, which no longer link

    def release(self) -> None:
        for t in (self.records, self.identifiers):
            release(t)


def resolve(tables: dict[str, ir.Table], guardrails: Guardrails = DEFAULT_GUARDRAILS,
            previous: ir.Table | None = None) -> Resolution:
    """Cluster the records of `tables` (Ibis tables of memberships, membership_devices, wecom). With
    `previous`, the last run's identifiers [key, one_id] on the same backend, clusters inherit its OneIDs
    (inherit()); without, every cluster is named after its earliest identifier."""
    e = edges(tables, guardrails.blocked).pipe(materialize)
    nodes, keys, rounds = _clusters(e)
    capped = over_cap(keys, dict(guardrails.caps), e).pipe(materialize) if guardrails.caps else None
    dropped = int(capped.count().to_pyarrow().as_py()) if capped is not None else 0
    components = None  # the components before the caps, when the caps split some
    if dropped:
        log.debug("%d identifier values exceed the per-person cap of their kind and no longer link", dropped)
        components = nodes.select("node", component="label").pipe(materialize)
        nodes, keys, more = _recluster(e, nodes, keys, capped)
        rounds += more
    if capped is not None:
        release(capped)
    # A cluster is named after its earliest identifier, held by its root (the node whose nid is the label).
    roots = nodes.filter(nodes.nid == nodes.label)
    if previous is None:
        names = roots.select("label", one_id=one_id_expr(roots.first_key)).pipe(materialize)
    else:
        names = inherit(roots.select("label", "first_key", one_id=one_id_expr(roots.first_key)), keys, previous)
    ids = keys.join(names, "label").select("key", "one_id").pipe(materialize)
    # A record without usable identifiers is a cluster of its own, named after itself.
    rec = records(tables).left_join(nodes.select("node", "label"), "node")
    rec = rec.left_join(names, "label")
    # component: the connected component before the caps (None without identifiers; see Resolution)
    if components is not None:
        rec = rec.left_join(components, "node")
    component = rec.label if components is None else rec.component
    lonely = one_id_expr("record:" + rec.table + ":" + rec.record_id)  # a CASE hashes only the rows without
    rec = rec.select("table", "record_id", one_id=ibis.cases((rec.one_id.isnull(), lonely), else_=rec.one_id),
                     component=component.cast("int64")).pipe(materialize)
    sizes = rec.group_by("one_id").agg(size=ibis._.count())
    try:
        guardrails.check(sizes, ids, e)
    finally:
        for done in (nodes, keys, names, e, *(() if components is None else (components,))):
            release(done)
    return Resolution(rec, ids, rounds, sizes, capped=dropped)


MAX_RENAMES = 8  # rounds of inherit()'s clash repair; each is needed only if the one before clashed


def inherit(names: ir.Table, keys: ir.Table, previous: ir.Table) -> ir.Table:
    """[label, one_id]: the OneID of each cluster, carried over from the last run where it can be.

    `names` [label, first_key, one_id] holds each cluster's derived id (from its earliest identifier), `keys`
    [key, label] its identifiers, `previous` [key, one_id] the last run's map. A cluster inherits the previous
    OneID most of its identifiers held (ties: the smallest OneID) when that OneID's identifiers are also
    mostly in this cluster (ties: the smallest label); so each previous OneID goes to at most one cluster, on a
    split to the part holding most of it. Every other cluster keeps its derived id, unless another cluster
    inherited that very id (e.g. the smaller part of a split, holding the earliest identifier): then the id is
    rehashed as `first_key#1` (`#2`, ... in the unlikely case that clashes again). All joins in the engine.
    """
    votes = keys.join(previous.select("key", old="one_id"), "key").group_by(["label", "old"]).agg(n=ibis._.count())
    votes = votes.pipe(materialize)
    by_cluster = ibis.row_number().over(group_by="label", order_by=[ibis.desc("n"), "old"])
    by_old = ibis.row_number().over(group_by="old", order_by=[ibis.desc("n"), "label"])
    won = votes.mutate(c=by_cluster, o=by_old).filter((ibis._.c == 0) & (ibis._.o == 0)).select("label", "old")
    named = names.left_join(won, "label")
    named = named.select("label", "first_key", inherited=named.old.notnull(),
                         one_id=ibis.coalesce(named.old, named.one_id)).pipe(materialize)
    release(votes)
    for attempt in range(1, MAX_RENAMES + 1):
        dup = named.group_by("one_id").agg(n=ibis._.count()).filter(ibis._.n > 1).select("one_id")
        clash = named.filter(~named.inherited).join(dup, "one_id", how="semi")
        clash = clash.select("label", fix=one_id_expr(clash.first_key + f"#{attempt}")).pipe(materialize)
        clashes = int(clash.count().to_pyarrow().as_py())
        if not clashes:
            out = named.select("label", "one_id").pipe(materialize)
            for done in (named, clash):
                release(done)
            return out
        log.info("%d clusters' derived OneIDs are held by others; rehashed with #%d", clashes, attempt)
        fixed = named.left_join(clash, "label")
        fixed = fixed.select("label", "first_key", "inherited", one_id=ibis.coalesce(fixed.fix, fixed.one_id))
        fixed = fixed.pipe(materialize)
        for done in (named, clash):
            release(done)
        named = fixed
    raise RuntimeError(f"OneIDs still clash after {MAX_RENAMES} renames")


def resolve_frames(tables: dict[str, pd.DataFrame], con=None, guardrails: Guardrails = DEFAULT_GUARDRAILS,
                   previous: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """resolve() for in-memory frames: (records[table, record_id, one_id], identifiers[key, one_id]), with
    OneIDs carried over from `previous` [key, one_id] when given."""
    con = con or engine.connect()
    needed = {name: tables[name] for name in ("memberships", "membership_devices", "wecom")}
    prev = ibis.memtable(previous[["key", "one_id"]]) if previous is not None else None
    res = resolve(ingest.register(con, needed), guardrails, prev)
    out = res.records.to_pandas(), res.identifiers.to_pandas()
    res.release()
    return out


def _pairs(previous: ir.Table, current: ir.Table) -> ir.Table:
    """[old, new, n_in, n_out]: the distinct (previous OneID, current OneID) pairs of the keys in both maps;
    n_in: previous OneIDs whose keys the current one holds, n_out: current OneIDs holding the previous one's."""
    both = previous.select("key", old="one_id").join(current.select("key", new="one_id"), "key")
    both = both.select("old", "new").distinct()
    fan_in = both.group_by("new").agg(n_in=ibis._.count())
    fan_out = both.group_by("old").agg(n_out=ibis._.count())
    return both.join(fan_in, "new").join(fan_out, "old").select("old", "new", "n_in", "n_out")


def _moved(pairs: ir.Table) -> ir.Table:
    """[change, old_one_id, new_one_id] of _pairs(): merge (a previous OneID's keys went to a current OneID
    that also holds another previous OneID's, under the other's id), split (a previous OneID's keys went to
    2+ current OneIDs: one row per part that does not carry the old id), rename (all of a previous OneID's keys,
    and only they, now have another id). A pair that is both a merge and a split is listed as both."""
    moved = pairs.filter(pairs.old != pairs.new)
    kinds = [("merge", moved.n_in > 1), ("split", moved.n_out > 1), ("rename", (moved.n_in == 1) & (moved.n_out == 1))]
    parts = [moved.filter(cond).select(change=ibis.literal(kind), old_one_id="old", new_one_id="new")
             for kind, cond in kinds]
    return parts[0].union(parts[1], distinct=False).union(parts[2], distinct=False)


def compare(previous: ir.Table, current: ir.Table) -> tuple[dict[str, int], pd.DataFrame]:
    """(counts, log): how OneIDs moved between two runs' [key, one_id] maps (keys present in both runs), and
    every merge, split and rename (_moved; a OneID that kept its keys, or gained new ones, under its id is
    absent) as a frame [change, old_one_id, new_one_id] sorted by those columns.

    kept: previous OneIDs still in use for some of their keys; merged: previous OneIDs some of whose keys
    now sit under another previous person's id; split: previous OneIDs whose keys now belong to 2+ current
    ones; renamed: previous OneIDs whose keys all moved to one new id of their own; new: current OneIDs that
    are not a kept previous one. OneIDs without a usable identifier (a record named after itself) are in
    neither map and not counted.
    """
    pairs = _pairs(previous, current).pipe(materialize)
    log_frame = _moved(pairs).to_pandas().sort_values(["change", "old_one_id", "new_one_id"], ignore_index=True)
    kept = int(pairs.filter(pairs.old == pairs.new).select("old").distinct().count().to_pyarrow().as_py())
    split = int(pairs.filter(pairs.n_out > 1).select("old").distinct().count().to_pyarrow().as_py())
    current_ids = int(current.select("one_id").distinct().count().to_pyarrow().as_py())
    release(pairs)
    moved_olds = log_frame.groupby("change")["old_one_id"].nunique()
    counts = {"kept": kept, "merged": int(moved_olds.get("merge", 0)), "split": split,
              "renamed": int(moved_olds.get("rename", 0)), "new": current_ids - kept}
    return counts, log_frame
