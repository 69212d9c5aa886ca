"""`rta cdp report`: OneID accuracy against the simulator's ground truth, and tag and segment statistics.

Pairwise precision = of the record pairs the CDP put in one OneID, the share that are truly one person;
recall = of the record pairs that are truly one person, the share the CDP put together. Computed with
group-bys on the engine (pairs in a group of n: n(n-1)/2), never by enumerating pairs.
"""

from __future__ import annotations

from pathlib import Path

import ibis
import ibis.expr.types as ir

from .identity import Resolution
from .profiles import FLAGS


def _pairs(t: ir.Table, *keys: str) -> int:
    sizes = t.group_by(list(keys)).agg(n=ibis._.count())
    return int(sizes.aggregate(p=(sizes.n * (sizes.n - 1) / 2).sum()).to_pyarrow()["p"][0].as_py() or 0)


def identity_accuracy(con: ibis.BaseBackend, world: Path, res: Resolution) -> dict:
    """Pairwise precision and recall of res.records against truth_memberships and truth_wecom."""
    truth_m = con.read_parquet(str(Path(world) / "truth_memberships.parquet"))
    truth_w = con.read_parquet(str(Path(world) / "truth_wecom.parquet"))
    truth = truth_m.select(table=ibis.literal("memberships"), record_id="record_id", person="truth_person").union(
        truth_w.select(table=ibis.literal("wecom"), record_id="friendship_id", person="truth_person"))
    joined = res.records.join(truth, ["table", "record_id"])
    both, predicted, actual = _pairs(joined, "one_id", "person"), _pairs(joined, "one_id"), _pairs(joined, "person")
    counts = joined.aggregate(records=joined.count(), one_ids=joined.one_id.nunique(),
                              persons=joined.person.nunique()).to_pyarrow().to_pylist()[0]
    return {
        "records": counts["records"],
        "one_ids": counts["one_ids"],
        "true_persons": counts["persons"],
        "pairwise_precision": round(both / predicted, 6) if predicted else 1.0,
        "pairwise_recall": round(both / actual, 6) if actual else 1.0,
        "label_propagation_rounds": res.rounds,
    }


def identity_counts(res: Resolution) -> dict:
    """Without truth files (real data): records, OneIDs and the largest clusters, so the de-duplication is
    still visible; precision and recall need a simulated world's truth."""
    r = res.records
    sizes = r.group_by("one_id").agg(n=ibis._.count())
    counts = sizes.aggregate(records=sizes.n.sum(), one_ids=sizes.count(), largest=sizes.n.max(),
                             multi=(sizes.n > 1).sum()).to_pyarrow().to_pylist()[0]
    return {
        "records": int(counts["records"] or 0),
        "one_ids": int(counts["one_ids"]),
        "one_ids_with_several_records": int(counts["multi"] or 0),
        "largest_cluster": int(counts["largest"] or 0),
        "label_propagation_rounds": res.rounds,
        "accuracy": "not measured: no truth_memberships.parquet / truth_wecom.parquet in the input (rta simulate "
                    "writes them)",
    }


def segment_sizes(profiles: ir.Table) -> dict[str, int]:
    row = profiles.aggregate(**{f.removeprefix("seg_"): profiles[f].cast("int64").sum() for f in FLAGS},
                             profiles=profiles.count()).to_pyarrow().to_pylist()[0]
    return {k: int(v or 0) for k, v in row.items()}
