"""Tags per OneID, and segments declared in YAML over them. Ibis expressions: the same on every engine.

Tags (one row per OneID, as of the cutoff):
    lifecycle              "0", "1", "2" or "3+" orders
    days_since_last_order  whole days; null for non-buyers
    r_score, f_score, m_score  1..5 quintiles among buyers (5 = most recent / most orders / most spent),
                           ties broken by one_id so every engine gives the same answer; 0 for non-buyers
    top_category, top_channel  most frequent in the person's orders (ties: the smaller name)
    top_hour, top_weekday  local (UTC+8) hour 0-23 and ISO weekday 1-7 most ordered in
    wecom_friend, guide_id, wecom_store_id  the latest still-active friendship's guide and store
    wecom_chats_30d        chats in the WeCom interactions of the last 30 days (0 without any)
    days_since_last_chat   whole days since the latest chat; null without any
    in_wecom_group         in at least one WeCom group: the latest join/leave event of some group is a join
    best_store_id, best_store_source  the store most ordered in (ties: the latest order; source "orders"),
                           else the latest active friendship's store ("wecom"), else the registration
                           store of the latest store-channel membership ("registration")
    best_store_region, best_store_city  of the best store, from the stores table (null if unknown there)
    new_store_id, new_store_nearby  the latest store opened in the best store's city within the last
                           NEW_STORE_DAYS days before the cutoff, and whether there is one

Segments file (YAML): a mapping of segment name to a list of conditions that must all hold:
    segments:
      lapsing_repeat_buyers:
        - [lifecycle, in, ["2", "3+"]]
        - [days_since_last_order, between, [60, 180]]
      wecom_vips: [[wecom_friend, "==", true], [m_score, ">=", 5]]
Operators: ==, !=, <, <=, >, >=, in, not_in, between (inclusive), is_null, not_null. The file is checked
completely when the config is loaded (cdp.config, `segment_problems`): tags known (tag_schema, plus the
predictive score tags), operators known, each value shaped for its operator and typed as its tag.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from pathlib import Path

import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir
import numpy as np
import pandas as pd
import yaml

from rta_service.settings import SettingsError

from .engine import materialize
from .identity import IDENTIFIERS_SCHEMA, RECORDS_SCHEMA, Resolution
from .profiles import DAY, SEGMENTS, TZ, before, device_index, profile_table, with_one_ids
from .schema import SCHEMAS

TZ_OFFSET_S = int(TZ.utcoffset(None).total_seconds())
CHAT_DAYS = 30
NEW_STORE_DAYS = 60
OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not_in", "between", "is_null", "not_null")


def _top(t: ir.Table, column: str, name: str) -> ir.Table:
    """[one_id, name]: the most frequent value of `column` per one_id (ties: the smallest value)."""
    counts = t.filter(t[column].notnull()).group_by(["one_id", column]).agg(n=ibis._.count())
    rank = ibis.row_number().over(group_by="one_id", order_by=[ibis.desc("n"), column])
    return counts.mutate(r=rank).filter(ibis._.r == 0).select("one_id", **{name: column})


def _quintile(t: ir.Table, column: str) -> ir.IntegerValue:
    return (ibis.ntile(5).over(order_by=[t[column], t.one_id]) + 1).cast("int64")


def tag_table(t: dict[str, ir.Table], res: Resolution, profiles: ir.Table, cutoff: int) -> ir.Table:
    """One row per OneID of `profiles` with the tags above, materialised (t: the inputs as of the cutoff,
    with OneIDs: cdp.profiles.with_one_ids)."""
    o = t["orders"]
    local = o.ts + TZ_OFFSET_S
    o = o.mutate(hour=((local % DAY) // 3600).cast("int64"), weekday=(((local // DAY) + 3) % 7 + 1).cast("int64"))
    w = t["wecom"]
    removed = w.removed_ts.fill_null(0)
    active = w.filter((removed == 0) | (removed >= cutoff))
    latest = ibis.row_number().over(group_by="one_id", order_by=[ibis.desc("added_ts"), "friendship_id"])
    friend = active.mutate(r=latest).filter(ibis._.r == 0).select("one_id", "guide_id", wecom_store_id="store_id")
    stores = o.filter(o.store_id.notnull()).group_by(["one_id", "store_id"]).agg(n=ibis._.count(), last=o.ts.max())
    best = ibis.row_number().over(group_by="one_id", order_by=[ibis.desc("n"), ibis.desc("last"), "store_id"])
    stores = stores.mutate(r=best).filter(ibis._.r == 0).select("one_id", order_store_id="store_id")
    m = t["memberships"]
    m = m.filter(m.store_id.notnull() & (m.channel == "store"))
    latest_m = ibis.row_number().over(group_by="one_id", order_by=[ibis.desc("created_ts"), "record_id"])
    registered = m.mutate(r=latest_m).filter(ibis._.r == 0).select("one_id", registration_store_id="store_id")

    buyers = profiles.filter(profiles.order_count > 0)
    rfm = buyers.select("one_id", r_score=_quintile(buyers, "last_order_ts"), f_score=_quintile(buyers, "order_count"),
                        m_score=_quintile(buyers, "monetary_fen"))
    p = profiles.select("one_id", "order_count", "last_order_ts", "monetary_fen", "wecom_friend", "is_member")
    for part in (rfm, _top(o, "category", "top_category"), _top(o, "channel", "top_channel"),
                 _top(o, "hour", "top_hour"), _top(o, "weekday", "top_weekday"), friend, stores, registered,
                 _wecom_activity(t["wecom_interactions"], res.identifiers, cutoff)):
        p = p.left_join(part, "one_id").select(*p.columns, *(c for c in part.columns if c != "one_id"))
    best_store = ibis.coalesce(p.order_store_id, p.wecom_store_id, p.registration_store_id)
    source = ibis.cases((p.order_store_id.notnull(), "orders"), (p.wecom_store_id.notnull(), "wecom"),
                        (p.registration_store_id.notnull(), "registration"), else_=ibis.null("string"))
    p = p.mutate(best_store_id=best_store, best_store_source=source)
    places = _store_places(t["stores"], cutoff)
    p = p.left_join(places, p.best_store_id == places.place_store_id)
    count = p.order_count
    out = p.select(
        "one_id", "is_member", "order_count", "monetary_fen", "wecom_friend",
        lifecycle=ibis.cases((count == 0, "0"), (count == 1, "1"), (count == 2, "2"), else_="3+"),
        days_since_last_order=ibis.cases((count > 0, (cutoff - p.last_order_ts) // DAY), else_=ibis.null("int64")),
        r_score=p.r_score.fill_null(0), f_score=p.f_score.fill_null(0), m_score=p.m_score.fill_null(0),
        top_category="top_category", top_channel="top_channel", top_hour="top_hour", top_weekday="top_weekday",
        guide_id="guide_id", wecom_store_id="wecom_store_id",
        wecom_chats_30d=p.wecom_chats_30d.fill_null(0).cast("int64"),
        days_since_last_chat=(cutoff - p.last_chat_ts) // DAY,
        in_wecom_group=p.in_wecom_group.fill_null(False),
        best_store_id="best_store_id", best_store_source="best_store_source",
        best_store_region="region", best_store_city="city",
        new_store_id="new_store_id", new_store_nearby=p.new_store_id.notnull(),
    ).pipe(materialize)
    return out


def _wecom_activity(events: ir.Table, identifiers: ir.Table, cutoff: int) -> ir.Table:
    """[one_id, wecom_chats_30d, last_chat_ts, in_wecom_group] from WeCom interactions, each attached to
    the OneID that holds its external_userid (the `wecom:` identifier); events of an external_userid no
    OneID holds (a junk value, or a friendship not in the inputs) attach to nobody."""
    e = _keyed(events).join(_wecom_keys(identifiers), "key")
    chats = e.filter(e.type == "chat").group_by("one_id").agg(
        wecom_chats_30d=(ibis._.ts >= cutoff - CHAT_DAYS * DAY).sum(), last_chat_ts=ibis._.ts.max())
    g = e.filter(e.type.isin(["group_join", "group_leave"]) & e.group_id.notnull())
    # On a tie the leave counts as the later event ("group_leave" sorts after "group_join").
    latest = ibis.row_number().over(group_by=["one_id", "group_id"], order_by=[ibis.desc("ts"), ibis.desc("type")])
    groups = g.mutate(r=latest).filter(ibis._.r == 0).group_by("one_id").agg(
        in_wecom_group=(ibis._.type == "group_join").any())
    return chats.outer_join(groups, "one_id").select(
        one_id=ibis.coalesce(ibis._.one_id, ibis._.one_id_right), wecom_chats_30d="wecom_chats_30d",
        last_chat_ts="last_chat_ts", in_wecom_group="in_wecom_group")


def _wecom_keys(identifiers: ir.Table) -> ir.Table:
    """The `wecom:` identifiers: about a tenth of them, the only ones events can match."""
    return identifiers.filter(identifiers.key.startswith("wecom:"))


def _keyed(events: ir.Table) -> ir.Table:
    return events.mutate(key="wecom:" + events.external_userid)


def unattached_events(events: ir.Table, identifiers: ir.Table, cutoff: int) -> int:
    """WeCom interactions before the cutoff whose external_userid no OneID holds: reported, not silently lost."""
    before = _keyed(events.filter(events.ts < cutoff))
    return int(before.join(_wecom_keys(identifiers), "key", how="anti").count().to_pyarrow().as_py())


def _store_places(stores: ir.Table, cutoff: int) -> ir.Table:
    """[place_store_id, region, city, new_store_id] per store open before the cutoff: its region and city,
    and the latest store opened in that city in the NEW_STORE_DAYS days before the cutoff (null if none)."""
    recent = stores.filter(stores.opened_ts >= cutoff - NEW_STORE_DAYS * DAY)
    newest = ibis.row_number().over(group_by="city", order_by=[ibis.desc("opened_ts"), ibis.desc("store_id")])
    recent = recent.mutate(r=newest).filter(ibis._.r == 0).select(new_city="city", new_store_id="store_id")
    places = stores.left_join(recent, stores.city == recent.new_city)
    return places.select(place_store_id="store_id", region="region", city="city", new_store_id="new_store_id")


FIRST_PURCHASE = "p_first_purchase"  # predictive score tags (cdp/predictive.py), float64, null outside their population


def repurchase_name(horizon_days: int) -> str:
    return f"p_repurchase_{horizon_days}d"


def score_tags(horizon_days: int) -> tuple[str, str]:
    """The predictive stage's score tags, added to the tags as float64 columns (cdp.predictive.stage)."""
    return FIRST_PURCHASE, repurchase_name(horizon_days)


@functools.cache
def tag_schema() -> ibis.Schema:
    """The tags' columns and types: tag_table built on unbound tables of the input schemas (cdp/schema.py) and
    of resolve()'s outputs. Nothing is read or computed, so the config can check segments before any work."""
    t = before({name: ibis.table(schema, name=name) for name, schema in SCHEMAS.items()}, 0)
    res = Resolution(ibis.table(RECORDS_SCHEMA, name="records"), ibis.table(IDENTIFIERS_SCHEMA, name="identifiers"),
                     rounds=0, sizes=None)
    joined = with_one_ids(t, res)
    profiles = profile_table(joined, res, device_index(res.identifiers), 0, 0)
    return tag_table(joined, res, profiles, 0).schema()


SCORE_TAG = re.compile(rf"{FIRST_PURCHASE}|p_repurchase_\d+d")  # score_tags of any horizon


def tag_types(scores: tuple[str, ...] | None = ()) -> dict[str, dt.DataType]:
    """{tag: type}: tag_schema() plus the predictive score tags named (float64), what segments may use;
    scores None: every score tag of any horizon (when the configured horizon is itself invalid)."""
    types = dict(tag_schema().items())
    return _AnyScore(types) if scores is None else {**types, **dict.fromkeys(scores, dt.float64)}


class _AnyScore(dict):
    """{tag: type} that also holds every score tag SCORE_TAG matches, as float64."""

    def __contains__(self, key) -> bool:
        return super().__contains__(key) or (isinstance(key, str) and SCORE_TAG.fullmatch(key) is not None)

    def __missing__(self, key):
        if key in self:
            return dt.float64
        raise KeyError(key)


NO_VALUE = ("is_null", "not_null")
LIST_OPS = ("in", "not_in")


def segment_problems(path: Path, types: dict[str, dt.DataType]) -> tuple[dict[str, list], list[str]]:
    """(segments, problems) of a segments file checked against the tags' types: every problem found, each
    a line naming the file, the segment and the condition; segments is usable only without problems."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        return {}, [f"{path}: {exc}"]
    segments = doc.get("segments") if isinstance(doc, dict) else None
    if not isinstance(segments, dict) or not segments:
        return {}, [f"{path}: expected a mapping under 'segments' of segment name to a list of conditions"]
    problems = [f"{path}: unknown key {key!r} (expected only 'segments')" for key in doc if key != "segments"]
    for name, conditions in segments.items():
        where = f"{path}: segment {name}"
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: a segment name must be a non-empty string (quote it: '{name}')")
        elif name in SEGMENTS:
            problems.append(f"{where}: the name of a built-in segment ({', '.join(SEGMENTS)})")
        if not isinstance(conditions, list) or not conditions:
            problems.append(f"{where}: expected a list of [tag, op, value] conditions")
            continue
        for i, cond in enumerate(conditions, 1):
            problem = _condition_problem(cond, types)
            if problem:
                shown = json.dumps(cond, default=str, ensure_ascii=False)
                problems.append(f"{where}, condition {i} {shown}: {problem}")
    return segments, problems


def load_segments(path: Path, types: dict[str, dt.DataType] | None = None) -> dict[str, list]:
    """{segment: [[tag, op, value], ...]} from a YAML file, checked against `types` (default: tag_types(), the
    tags without predictive scores); raises SettingsError listing every problem."""
    segments, problems = segment_problems(path, tag_types() if types is None else types)
    if problems:
        raise SettingsError("invalid segments:\n" + "\n".join(f"  {p}" for p in problems))
    return segments


def _condition_problem(cond, types: dict[str, dt.DataType]) -> str | None:
    """What is wrong with one [tag, op, value] condition, or None."""
    if not isinstance(cond, list) or len(cond) not in (2, 3):
        return "expected [tag, op, value] ([tag, op] for is_null and not_null)"
    tag, op = cond[0], cond[1]
    if not isinstance(tag, str) or tag not in types:
        close = difflib.get_close_matches(str(tag), types, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        if isinstance(tag, str) and SCORE_TAG.fullmatch(tag):
            hint += "predictive score tags need predictive.enabled and are named by predictive.horizon_days; "
        return f"unknown tag {tag!r} ({hint}tags: {', '.join(types)})"
    if op not in OPS:
        return f"unknown operator {op!r} (operators: {', '.join(OPS)})"
    if op in NO_VALUE:
        return f"{op} takes no value: [{tag}, {op}]" if len(cond) == 3 else None
    if len(cond) == 2:
        return f"{op!r} needs a value: [{tag}, {json.dumps(op)}, value]"
    value, kind = cond[2], types[tag]
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            return f"between needs a list of two values [low, high], got {json.dumps(value, default=str)}"
        bad = [_value_problem(tag, kind, v) for v in value]
        if any(bad):
            return next(b for b in bad if b)
        return f"between [{value[0]}, {value[1]}]: the low bound is above the high one" if value[0] > value[1] else None
    if op in LIST_OPS:
        if not isinstance(value, list) or not value:
            example = json.dumps([value] if value is not None and not isinstance(value, (list, dict)) else ["..."],
                                 ensure_ascii=False)
            return f"{op} needs a non-empty list of values, e.g. {example}"
        return next((p for p in (_value_problem(tag, kind, v) for v in value) if p), None)
    if isinstance(value, (list, dict)):
        return f"{op!r} needs one value, not a {type(value).__name__} (for several values use in or not_in)"
    if value is None:
        return f"{op!r} needs a value, not null (for missing values use is_null or not_null)"
    return _value_problem(tag, kind, value)


def _value_problem(tag: str, kind: dt.DataType, value) -> str | None:
    """Whether one value fits the tag's type: strings for string tags, true/false for boolean ones, numbers
    (not true/false) for numeric ones. YAML reads 2 as a number and "2" as a string, so the hint quotes."""
    if kind.is_string():
        if not isinstance(value, str):
            return f"{tag} is a string tag: write the value as a string, {json.dumps(str(value))}"
    elif kind.is_boolean():
        if not isinstance(value, bool):
            return f"{tag} is a boolean tag: write true or false (without quotes), not {json.dumps(value, default=str)}"
    elif kind.is_numeric():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            shown = json.dumps(value, default=str)
            return f"{tag} is a number tag ({kind}): write a number (without quotes), not {shown}"
    return None


def _condition(tags: ir.Table, cond: list) -> ir.BooleanValue:
    tag, op, value = cond[0], cond[1], cond[2] if len(cond) == 3 else None
    return _OPS[op](tags[tag], value)


_OPS = {
    "==": lambda c, v: c == v, "!=": lambda c, v: c != v, "<": lambda c, v: c < v, "<=": lambda c, v: c <= v,
    ">": lambda c, v: c > v, ">=": lambda c, v: c >= v, "in": lambda c, v: c.isin(v),
    "not_in": lambda c, v: c.notin(v), "between": lambda c, v: c.between(v[0], v[1]),
    "is_null": lambda c, _v: c.isnull(), "not_null": lambda c, _v: c.notnull(),
}


def apply_segments(tags: ir.Table, segments: dict[str, list]) -> ir.Table:
    """tags plus a boolean column `segment_{name}` per segment (segments: load_segments, checked against
    the tags' types)."""
    columns = {}
    for name, conditions in segments.items():
        flag = ibis.literal(True)
        for cond in conditions:
            flag = flag & _condition(tags, cond)
        columns[f"segment_{name}"] = flag.fill_null(False)
    return tags.mutate(**columns)


def segment_sizes(tagged: ir.Table) -> dict[str, int]:
    flags = [c for c in tagged.columns if c.startswith("segment_")]
    if not flags:
        return {}
    row = tagged.aggregate(**{c.removeprefix("segment_"): tagged[c].cast("int64").sum() for c in flags})
    return {k: int(v or 0) for k, v in row.to_pyarrow().to_pylist()[0].items()}


def with_segments(profiles: pd.DataFrame, tagged: ir.Table) -> pd.DataFrame:
    """profiles (cdp.profiles.to_frame) with the YAML segments each person is in appended to the fixed
    `segments`, in the segments file's order: what the Redis profile carries for policy audiences."""
    flags = [c for c in tagged.columns if c.startswith("segment_")]
    if not flags:
        return profiles
    member = tagged.filter(ibis.or_(*(tagged[c] for c in flags))).select("one_id", *flags).to_pandas()
    names = np.array([c.removeprefix("segment_") for c in flags], dtype=object)
    extra = dict(zip(member["one_id"], (tuple(names[row]) for row in member[flags].to_numpy(dtype=bool)),
                     strict=True))
    return profiles.assign(segments=[fixed + extra.get(one_id, ()) for one_id, fixed
                                     in zip(profiles["one_id"], profiles["segments"], strict=True)])
