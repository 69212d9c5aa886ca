"""The exporter against a real redis-server: wire encoding, pacing, incremental runs, layout checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import redis

from cdp import wire
from cdp.export import Pacer, ShrinkRefused, export
from cdp.profiles import COLUMNS, to_message
from rta.v1 import decision_pb2 as pb
from rta_service import keyspace
from tests.service_handle import read_profiles


def people(n: int, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """n profiles with one or two device IDs each (index [id_type, md5, one_id])."""
    rng = np.random.default_rng(seed)
    one = [f"{i:024x}" for i in range(n)]
    names = ("member", "buyer", "lapsed_90_180", "wecom_friend", "vip")
    profiles = pd.DataFrame({
        "one_id": one, "is_member": rng.random(n) < 0.5,
        "segments": [tuple(s for s in names if rng.random() < 0.4) for _ in range(n)],
        "order_count": rng.integers(0, 300, n), "last_order_ts": rng.integers(0, 1.8e9, n),
        "first_seen_ts": rng.integers(1.5e9, 1.6e9, n), "monetary_fen": rng.integers(0, 10**9, n),
        "wecom_friend": rng.random(n) < 0.2, "channel_count": rng.integers(0, 5, n),
        "device_count": rng.integers(0, 3, n), "updated_ts": 1_700_000_000})
    second = rng.random(n) < 0.5
    index = pd.DataFrame({
        "id_type": np.concatenate([np.full(n, pb.OAID), np.full(int(second.sum()), pb.IMEI)]).astype(np.int8),
        "md5": [rng.bytes(16).hex() for _ in range(n + int(second.sum()))],
        "one_id": one + [o for o, s in zip(one, second, strict=True) if s]})
    return profiles[list(COLUMNS)], index


def test_vectorised_encoding_is_protobufs_own():
    profiles, _ = people(500)
    first, second = profiles.iloc[0].to_dict(), profiles.iloc[1].to_dict()
    odd = pd.DataFrame([first | {"one_id": "é" * 70, "last_order_ts": -5, "order_count": 2**32 - 1, "segments": ()},
                        second | {"one_id": "", "monetary_fen": 2**62}])
    frame = pd.concat([profiles, odd], ignore_index=True)
    expected = [to_message(row).SerializeToString() for row in frame.itertuples(index=False)]
    assert wire.encode_profiles(frame).to_list() == expected
    # predictive scores (cdp.predictive.attach): a float column per score, NaN where a person has none
    rng = np.random.default_rng(3)
    scored = frame.assign(score_p_first_purchase=np.where(rng.random(len(frame)) < 0.5, rng.random(len(frame)), np.nan),
                          score_p_repurchase_30d=np.where(rng.random(len(frame)) < 0.5, 0.0, np.nan))
    expected = [to_message(row).SerializeToString(deterministic=True) for row in scored.itertuples(index=False)]
    assert wire.encode_profiles(scored).to_list() == expected
    assert sum(len(to_message(row).scores) == 2 for row in scored.itertuples(index=False)) > 50
    digits = wire.compact(wire.decimals(np.array([0, 7, 10, 999, 12345]))).to_list()
    assert digits == [b"0", b"7", b"10", b"999", b"12345"]
    assert wire.compact(*wire.resp_bulk(wire.from_bytes([b"ab", b""]))).to_list() == [b"$2\r\nab\r\n", b"$0\r\n\r\n"]
    d = wire.digests(wire.from_bytes([b"", b"a", b"a\x00", b"abcdefghi", b"abcdefghj", b"a"]))
    assert len(set(d[:5].tolist())) == 5 and d[1] == d[5]


def test_export_is_read_back_by_the_service_and_memory_is_small(redis_url):
    profiles, index = people(3000)
    client = redis.Redis.from_url(redis_url)
    out = export(client, profiles, index, ns="m")
    assert out["keys_written"] == len(index) and out["bucket_bits"] == keyspace.bucket_bits_for(len(index))
    assert out["largest_bucket"] <= 512 and out["layout_warnings"] == []
    assert set(out["encodings"]) <= {"ziplist", "listpack"}
    assert out["bytes_per_key"] < 150  # one string key per device ID took ~200 bytes
    stored = read_profiles(redis_url, "m", list(zip(index["id_type"], index["md5"], strict=True)))
    by_one = profiles.set_index("one_id")
    for s, one_id in zip(stored, index["one_id"], strict=True):
        want = to_message(by_one.loc[one_id].to_dict() | {"one_id": one_id})
        assert s.SerializeToString() == want.SerializeToString()
    assert read_profiles(redis_url, "m", [(pb.OAID, "0" * 32)]) == [None]


def test_a_server_that_would_defeat_the_layout_is_named(redis_url):
    profiles, index = people(200)
    client = redis.Redis.from_url(redis_url)
    before = client.config_get("hash-max-ziplist-value")
    client.config_set("hash-max-ziplist-value", 16)
    said = []
    try:
        out = export(client, profiles, index, ns="w", say=said.append)
    finally:
        client.config_set("hash-max-ziplist-value", before["hash-max-ziplist-value"])
    assert len(out["layout_warnings"]) == 1 and "hash-max-listpack-value >=" in out["layout_warnings"][0]
    assert any("WARNING" in s for s in said) and out["encodings"] == {"hashtable": out["encodings"]["hashtable"]}


class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 100.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_pacer_is_a_token_bucket():
    clock = FakeClock()
    pacer = Pacer(1000, clock, clock.sleep)
    assert pacer.chunk() == 100
    for _ in range(5):
        pacer.take(100)
    assert clock.sleeps == pytest.approx([0.1] * 4)  # the first chunk goes at once
    clock.now += 10  # idle: no debt, and no burst saved up beyond one chunk
    pacer.take(100)
    pacer.take(100)
    assert clock.sleeps[4:] == pytest.approx([0.1])
    unlimited = Pacer(0, clock, clock.sleep)
    unlimited.take(10**9)
    assert unlimited.chunk() > 1000 and len(clock.sleeps) == 5


def test_write_rate_paces_the_chunks(redis_url):
    profiles, index = people(1000)
    clock = FakeClock()
    client = redis.Redis.from_url(redis_url)
    out = export(client, profiles, index, ns="p", write_rate=2000, clock=clock, sleep=clock.sleep)
    # chunks of whole buckets of at most ~200 entries (a tenth of a second at 2000/s): about
    # len(index)/2000 seconds of pacing in all, less the first chunk, which goes at once
    assert len(clock.sleeps) >= len(index) // 200 - 1
    assert sum(clock.sleeps) == pytest.approx(out["paced_seconds"])
    assert len(index) / 2000 - 0.2 <= sum(clock.sleeps) <= len(index) / 2000
    assert out["keys_written"] == len(index)


def test_incremental_export_writes_only_what_changed(redis_url, tmp_path):
    profiles, index = people(2000)
    client = redis.Redis.from_url(redis_url)
    state = tmp_path / "state"
    first = export(client, profiles, index, ns="i", mode="incremental", state_dir=state)
    assert first["mode"] == "full" and "no previous export state" in first["full_because"]
    live = client.get("i:gen")

    changed = profiles.copy()
    changed["updated_ts"] = 1_800_000_000  # every run stamps its build time: not a change by itself
    person = index["one_id"].iloc[-1]  # a person with two device IDs
    assert (index["one_id"] == person).sum() == 2
    changed.loc[changed["one_id"] == person, "order_count"] += 1
    gone = index.iloc[0]  # a device ID no longer resolved to anybody
    new_index = pd.concat([index.iloc[1:], pd.DataFrame({"id_type": [np.int8(pb.IDFA)], "md5": ["ab" * 16],
                                                         "one_id": [index["one_id"].iloc[5]]})], ignore_index=True)
    second = export(client, changed, new_index, ns="i", mode="incremental", state_dir=state)
    assert second["mode"] == "incremental" and client.get("i:gen") == live  # no new generation
    assert (second["keys_written"], second["changed"], second["new"], second["keys_deleted"]) == (3, 2, 1, 1)
    assert second["unchanged"] == len(new_index) - 3

    ids = list(zip(new_index["id_type"], new_index["md5"], strict=True))
    stored = read_profiles(redis_url, "i", ids + [(gone["id_type"], gone["md5"])])
    assert stored[-1] is None
    expected = changed.set_index("one_id")
    for s, one_id in zip(stored[:-1], new_index["one_id"], strict=True):
        assert s.one_id == one_id and s.order_count == expected.loc[one_id, "order_count"]
        # rewritten entries carry this run's build time, the others keep the time they were written
        assert s.updated_ts == (1_800_000_000 if one_id == person or s is stored[-2] else 1_700_000_000)

    third = export(client, changed, new_index, ns="i", mode="incremental", state_dir=state)
    assert (third["keys_written"], third["keys_deleted"], third["unchanged"]) == (0, 0, len(new_index))
    digests = pd.read_parquet(state / "export_digests.parquet")
    digests.loc[7, "digest"] ^= np.uint64(1)  # a digest differing in its lowest bit only is still a change
    digests.to_parquet(state / "export_digests.parquet")
    again = export(client, changed, new_index, ns="i", mode="incremental", state_dir=state)
    assert (again["keys_written"], again["changed"]) == (1, 1)

    client.set("i:gen", keyspace.pointer_value(9, first["bucket_bits"]))  # another export went live meanwhile
    fourth = export(client, changed, new_index, ns="i", mode="incremental", state_dir=state)
    assert fourth["mode"] == "full" and "not the one the state describes" in fourth["full_because"]
    assert fourth["generation"] == 10


def _live_entries(client, ns: str) -> int:
    gen = keyspace.parse_pointer(client.get(f"{ns}:gen")).generation
    return sum(client.hlen(k) for k in client.scan_iter(match=f"{ns}:{gen}:*", count=1000))


def test_an_export_that_would_empty_or_shrink_the_live_store_is_refused_before_writing(redis_url, tmp_path):
    profiles, index = people(1000)
    client = redis.Redis.from_url(redis_url)
    state = tmp_path / "state"
    first = export(client, profiles, index, ns="s", mode="incremental", state_dir=state)
    assert first["previous_entries"] == 0 and first["generation"] == 1  # a first export: nothing to shrink
    assert client.hgetall("s:export")[b"entries"] == str(len(index)).encode()
    digests_before = (state / "export_digests.parquet").read_bytes()
    keys_before = sorted(client.scan_iter(match="s:*", count=1000))
    empty = index.iloc[:0]
    truncated = index.iloc[: len(index) * 4 // 10]  # 60% fewer device entries
    for frame, mode, why in ((empty, "full", "no device entries while the live one has"),
                             (empty, "incremental", "no device entries"),
                             (truncated, "full", "60% fewer than the live one's"),
                             (truncated, "incremental", "60% fewer")):
        with pytest.raises(ShrinkRefused, match=why) as refused:
            export(client, profiles, frame, ns="s", mode=mode, state_dir=state)
        assert "generation 1 stays live" in str(refused.value) and "--allow-shrink" in str(refused.value)
        assert ("larger max_shrink" in str(refused.value)) == (len(frame) > 0)  # only the override empties it
        # nothing written: the same keys, the same live entries, the same state
        assert client.get("s:gen") == b"1:%d" % first["bucket_bits"] and _live_entries(client, "s") == len(index)
        assert sorted(client.scan_iter(match="s:*", count=1000)) == keys_before
        assert (state / "export_digests.parquet").read_bytes() == digests_before
    # max_shrink 1 lets any shrink through but an emptying one; without the recorded count it is counted
    client.delete("s:export")
    with pytest.raises(ShrinkRefused, match="no device entries"):
        export(client, profiles, empty, ns="s", max_shrink=1)
    assert export(client, profiles, index.iloc[:990], ns="s", max_shrink=0.5)["previous_entries_from"] == "counted"
    smaller = export(client, profiles, truncated, ns="s", max_shrink=1)
    assert smaller["previous_entries"] == 990 and smaller["previous_entries_from"] == "recorded"
    assert _live_entries(client, "s") == len(truncated)
    # a deliberate emptying, with the override
    emptied = export(client, profiles, empty, ns="s", allow_shrink=True)
    assert emptied["keys_written"] == 0 and _live_entries(client, "s") == 0
    assert client.hgetall("s:export")[b"entries"] == b"0"
    assert export(client, profiles, empty, ns="fresh")["generation"] == 1  # an empty namespace may get nothing


def test_an_incremental_export_records_the_new_count_and_a_crash_leaves_none(redis_url, tmp_path):
    profiles, index = people(500)
    client = redis.Redis.from_url(redis_url)
    state = tmp_path / "state"
    export(client, profiles, index, ns="c", mode="incremental", state_dir=state)
    second = export(client, profiles, index.iloc[:450], ns="c", mode="incremental", state_dir=state)
    assert second["mode"] == "incremental" and second["keys_deleted"] == len(index) - 450
    meta = {k.decode(): int(v) for k, v in client.hgetall("c:export").items()}
    assert meta["entries"] == 450 == _live_entries(client, "c") and meta["generation"] == 1
    assert meta["largest_bucket"] == max(client.hlen(k) for k in client.scan_iter(match="c:1:*"))
    client.hdel("c:export", "entries")  # as an incremental run that crashed mid-way leaves it
    assert export(client, profiles, index.iloc[:450], ns="c")["previous_entries_from"] == "counted"


def test_scores_are_exported_at_their_resolution_so_small_moves_are_not_rewritten(redis_url, tmp_path):
    profiles, index = people(800)
    rng = np.random.default_rng(4)
    scores = np.where(rng.random(len(profiles)) < 0.7, rng.random(len(profiles)) * 0.3, np.nan)
    scored = profiles.assign(score_p_first_purchase=scores)
    rounded = scored.assign(score_p_first_purchase=np.round(scores / 0.01) * 0.01)
    expected = [to_message(row).SerializeToString(deterministic=True) for row in rounded.itertuples(index=False)]
    assert wire.encode_profiles(scored, score_resolution=0.01).to_list() == expected
    # a retrained model moves every score a little (here by < 0.001, never across a step's midpoint)
    centre = np.round(scores / 0.01) * 0.01
    nudged = scored.assign(score_p_first_purchase=centre + (scores - centre) * 0.5 + 0.0004)
    client = redis.Redis.from_url(redis_url)
    for resolution, ns in ((0.01, "r1"), (0.0, "r0")):
        state = tmp_path / ns
        export(client, scored, index, ns=ns, mode="incremental", state_dir=state, score_resolution=resolution)
        again = export(client, nudged, index, ns=ns, mode="incremental", state_dir=state,
                       score_resolution=resolution)
        with_score = int(index["one_id"].isin(profiles["one_id"][~np.isnan(scores)]).sum())
        assert again["changed"] == (0 if resolution else with_score), resolution
    stored = read_profiles(redis_url, "r1", list(zip(index["id_type"], index["md5"], strict=True)))
    by_one = rounded.set_index("one_id")["score_p_first_purchase"]
    for s in stored:
        if not np.isnan(by_one[s.one_id]):
            assert s.scores["p_first_purchase"] == np.float32(by_one[s.one_id])
