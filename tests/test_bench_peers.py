"""Smoke tests of ``python -m benchmarks peers`` (benchmarks/peers.py):
each scenario runs end to end in a tiny configuration and reports what its
table and targets read. No timing is asserted: the benchmark measures, these
tests keep it working. With CRIU built (tests/criu_helpers.py finds it) the
CRIU rows run too; without it they are skipped, as the benchmark does.
"""

from __future__ import annotations

import re
import json
import os
import shutil

import pytest

from benchmarks import peers
from benchmarks._peertools import find_criu
from criu_helpers import _DEFAULT_CRIU
from dumper.scan.features import probe_scan_categories, probe_uffd_wp_async

pytestmark = [
    pytest.mark.skipif(shutil.which("gcc") is None, reason="the benchmark's targets are built with gcc"),
    pytest.mark.skipif(not (probe_scan_categories() and probe_uffd_wp_async()),
                       reason="the benchmark measures --pre-copy and the ioctl scanner: needs Linux >= 6.7"),
]


@pytest.fixture
def criu(monkeypatch, tmp_path):
    """The CRIU the benchmark will use (None: its rows are skipped); its
    images go to tmp_path."""
    monkeypatch.setenv("BENCH_TMP", str(tmp_path))
    if not os.environ.get("DUMPER_CRIU"):
        for c in _DEFAULT_CRIU:
            if c.is_file() and os.access(c, os.X_OK):
                monkeypatch.setenv("DUMPER_CRIU", str(c))
                break
    return find_criu()[0]


def tiny(*scenarios: str, **kw) -> peers.Config:
    small = dict(repeat=1, scenarios=scenarios, dense_mib=8, rates=("1", "max"), vma_pages=256,
                 sparse_tib=(1 / 1024,), sparse_pages=10, fallback_max_s=120, gcore=False, rate_window_s=0.2)
    return peers.Config(**{**small, **kw})


def _run(cfg: peers.Config) -> tuple[dict, dict]:
    r = peers.run(cfg)
    lines = peers.table(r)
    for s in r["sections"]:
        assert any(line.startswith(s["target"]) for line in lines), s["target"]
    json.dumps(r)  # what __main__ writes
    return r, {s["key"]: s for s in r["sections"]}


def _check_ratios(section: dict, criu) -> None:
    base = section["rows"].get("criu dump")
    if criu is None:
        assert base is None
        return
    assert base["ok"], base
    for name, row in section["rows"].items():
        if row.get("ok") and row.get("frozen_s") is not None and name != "gcore":
            assert row["frozen_s_ratio"] == pytest.approx(row["frozen_s"] / base["frozen_s"])
            assert row["bytes_ratio"] == pytest.approx(row["bytes"] / base["bytes"])


def test_dense_rows_and_targets(criu):
    r, by = _run(tiny("dense", gcore=True))
    s = by["dense"]
    rows = s["rows"]
    for name in ("dumper", "dumper --no-compress", "dumper --pre-copy"):
        assert rows[name]["ok"], rows[name]
        assert rows[name]["pages"] >= (8 << 20) // 4096
        assert {"freezing", "scan", "copy", "collect", "write"} <= rows[name]["phases_ms"].keys()
    assert rows["dumper --no-compress"]["bytes"] >= 8 << 20 > rows["dumper"]["bytes"]  # half of it is text
    assert any(n.startswith("pre-copy: ") for n in rows["dumper --pre-copy"]["notes"])
    assert "rounds" in rows["dumper --pre-copy"]["phases_ms"]
    _check_ratios(s, criu)
    if criu:
        assert {g["issue"] for g in r["goals"]} >= {"14.1", "10"}
    if shutil.which("gcore"):
        assert rows["gcore"]["ok"], rows["gcore"]


def test_writing_reports_rate_and_rounds(criu):
    _, by = _run(tiny("writing"))
    assert {"writing 1", "writing max"} <= by.keys()
    for key in ("writing 1", "writing max"):
        s = by[key]
        assert s["pages_per_s"] > 0
        pre = s["rows"]["dumper --pre-copy"]
        assert pre["ok"], pre
        (note,) = [n for n in pre["notes"] if n.startswith("pre-copy: ")]
        assert re.search(r"pre-copy: \d+ rounds? while running", note)
        _check_ratios(s, criu)


def test_many_vmas_against_one(criu):
    _, by = _run(tiny("vmas"))
    many, one = by["vmas many"], by["vmas one"]
    assert many["vmas"] >= 256 > one["vmas"]
    for s in (many, one):
        for name in ("dumper", "dumper --copy frozen"):  # the goal compares like with like: the frozen copies
            row = s["rows"][name]
            assert row["ok"], row
            assert row["max_rss_kib"] > 0 and row["pages"] >= 256
        assert s["rows"]["dumper --copy frozen"]["copy"] == "frozen"
        _check_ratios(s, criu)
    assert set(many["many_over_one"]) == {"frozen", "rss"}


def test_sparse_and_fallback_scanner(criu):
    _, by = _run(tiny("sparse"))
    (s,) = [v for k, v in by.items() if k.startswith("sparse")]
    assert s["reservation"] == 1 << 30
    fb = s["rows"]["dumper --backend pagemap (1)"]
    assert fb["ok"], fb
    assert fb["backend"] == "pagemap" and fb["entries_gb_per_s"] > 0
    assert s["rows"]["dumper"]["ok"], s["rows"]["dumper"]
    _check_ratios(s, criu)


def test_programs_page_sets_match_criu(criu):
    """The same stopped program dumped by both: the same pages, but for the
    text page CRIU's parasite dirties (docs/criu-export.md)."""
    _, by = _run(tiny("programs"))
    ran = [s for k, s in by.items() if k.startswith("program") and s["rows"]]
    assert ran, [s["notes"] for s in by.values()]
    for s in ran:
        assert s["rows"]["dumper"]["ok"], s["rows"]["dumper"]
        _check_ratios(s, criu)
        if criu:
            ps = s["page_sets"]
            assert "error" not in ps, ps
            assert ps["only_dumper"] == 0, (s["target"], ps)
            assert ps["only_criu"] == ps["only_criu_in_code"] <= 1, (s["target"], ps)


def test_config_from_env():
    cfg = peers.Config.from_env({"BENCH_REPEAT": "1", "BENCH_PEERS": "dense,sparse", "BENCH_RATES": "5, max",
                                 "BENCH_SPARSE_TIB": "1,16", "BENCH_GCORE": "0"})
    assert (cfg.repeat, cfg.scenarios, cfg.rates, cfg.sparse_tib, cfg.gcore) == (
        1, ("dense", "sparse"), ("5", "max"), (1.0, 16.0), False)
    with pytest.raises(SystemExit, match="unknown nope"):
        peers.Config.from_env({"BENCH_PEERS": "dense,nope"})
