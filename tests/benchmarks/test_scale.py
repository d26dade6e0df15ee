"""benchmarks/scale.py: the MSD-scale cost model's --quick run and its projection arithmetic."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest

from benchmarks import common, scale
from conftest import run_module


def test_extraction_hours_scale_as_one_over_n_with_efficiency():
    one = scale.extraction_hours(1.2, 241_904, 1, 0.9)
    assert one == pytest.approx(1.2 * 241_904 / 3600)
    for n in (2, 8, 128):
        assert scale.extraction_hours(1.2, 241_904, n, 0.9) == pytest.approx(one / (n * 0.9))
    assert scale.extraction_hours(1.2, 241_904, 8, 1.0) == pytest.approx(one / 8)


# /proc/cpuinfo of the 2-core VM the study ran on in December 2026 (two processor blocks, trimmed).
CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse4_1 sse4_2 avx f16c fma avx2 bmi2

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: other
flags\t\t: avx512f
"""


def test_cpu_identity_names_family_model_and_instruction_sets():
    cpu = common.cpu_identity(CPUINFO)
    assert cpu == {"cpu_model": "AMD EPYC", "cpu_family": "23", "cpu_model_number": "1",
                   "isa": ["sse4_2", "avx", "avx2", "fma"]}  # the first block only: no avx512f
    avx512 = common.cpu_identity("model name\t: Xeon\nflags\t: avx2 fma avx512f amx_tile\n")
    assert avx512["isa"] == ["avx2", "fma", "avx512f", "amx_tile"]
    assert common.cpu_identity("")["isa"] == []


def test_train_spec_parse():
    spec = scale.TrainSpec.parse("musicnn:sr16000-mel96-hop1-log:16:3")
    assert (spec.model, spec.batch_size, spec.patch_seconds) == ("musicnn", 16, 3.0)
    assert spec.label(29.1) == "MUSICNN 96×1"
    assert scale.TrainSpec.parse("vgg:sr12000-mel48-hop2-db:4").patch_seconds is None
    for bad in ("vgg:sr16000-mel96-hop1-log", "vgg:sr16000-mel96:4",
                "vgg:sr16000-mel96-hop1-log:0"):
        with pytest.raises(ValueError):
            scale.TrainSpec.parse(bad)


def test_quick_run_writes_consistent_outputs(tmp_path):
    out = tmp_path / "scale"
    proc = run_module("benchmarks.scale", "--quick", f"--out_dir={out}",
                      f"--work_dir={tmp_path}", "--workers=1,4,16", "--parallel_efficiency=0.8",
                      "--epochs=3", timeout=300)
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["benchmark"] == "scale" and line["gpu"] == "not measured"
    result = json.loads((out / "scale.json").read_text())
    machine = result["machine"]
    assert machine["cpu_count"] >= 1 and len(machine["load_average_start"]) == 3
    assert "cpu_family" in machine and isinstance(machine["isa"], list)
    assert machine["versions"]["tensorflow"] and machine["versions"]["essentia"]

    m, p = result["measured"], result["projection"]
    assert m["primary_format"] == "mp3" and 100 < m["audio"]["mp3"]["kbps"] < 160
    for fmt in ("mp3", "wav"):
        for key in ("12000", "16000", "native"):
            assert m["decode"][fmt][key]["median"] > 0
            assert m["decode"][fmt][f"cpu_{key}"]["median"] >= 0
    assert set(m["extraction"]) == {"mp3/float32", "mp3/float16", "mp3/uint8", "wav/float32"}
    for e in m["extraction"].values():
        assert e["examples_per_clip"] == 14  # the paper grid's 2 sr × 7 band counts
        assert 0 < e["decode_in_extract_s"]["median"] < e["extract_s"]["median"] \
            <= e["total_s_per_clip"]
        assert e["total_cpu_s_per_clip"] > 0

    # Storage: the paper grid's values (paper notes §3: 4,485,888 B of bases, 21,390,336 B of
    # views in float32), base layout below materialised views, codecs at 1/2 and 1/4.
    storage = m["storage"]["codecs"]
    assert storage["float32"]["base_layout_value_bytes_per_clip"] == 4_485_888
    assert storage["float32"]["materialised_value_bytes_per_clip"] == 21_390_336
    for s in storage.values():
        assert s["base_layout_value_bytes_per_clip"] < s["base_layout_bytes_per_clip"] \
            < s["materialised_bytes_per_clip"]
        assert 4.7 < s["materialised_over_base"] < 4.85
    f32 = storage["float32"]["base_layout_bytes_per_clip"]
    assert storage["float16"]["base_layout_bytes_per_clip"] / f32 == pytest.approx(0.5, rel=0.01)
    assert storage["uint8"]["base_layout_bytes_per_clip"] / f32 == pytest.approx(0.25, rel=0.01)

    # Projections.
    n = p["num_clips"]
    assert n == scale.MSD_CLIPS and p["train_clips"] == scale.MSD_TRAIN_CLIPS
    for key, proj in p["extraction"].items():
        per_clip = m["extraction"][key]["total_s_per_clip"]
        hours = proj["wall_hours"]
        assert set(hours) == {"1", "4", "16"}
        assert hours["1"] == pytest.approx(per_clip * n / 3600, rel=1e-3)
        for w in (4, 16):
            assert hours[str(w)] == pytest.approx(hours["1"] / (w * 0.8), rel=1e-3)
        cpu_hours = proj["wall_hours_cpu_basis"]
        assert cpu_hours["1"] == pytest.approx(
            m["extraction"][key]["total_cpu_s_per_clip"] * n / 3600, rel=1e-3)
        assert cpu_hours["16"] == pytest.approx(cpu_hours["1"] / (16 * 0.8), rel=1e-3)
    for name, s in p["storage"].items():
        assert s["base_layout_gb"] == pytest.approx(storage[name]["base_layout_bytes_per_clip"]
                                                    * n / 1e9, abs=0.01)
        assert s["base_layout_gb"] < s["materialised_gb"]
    assert len(m["training"]) == 1
    row = m["training"][0]
    assert row["examples_per_s"] > 0 and row["width"] == 1.0
    assert row["cpu_seconds_per_example"] > 0 and row["cores_busy"] > 0
    assert row["input_shape"] == [182, 8] and row["pipeline_examples_per_s"] > 0
    epoch = p["training"][f"vgg:{row['resolution']}"]
    assert epoch["epoch_hours_cpu"] == pytest.approx(
        p["train_clips"] / row["examples_per_s"] / 3600, rel=1e-3)
    assert epoch["run_hours_cpu"] == pytest.approx(3 * epoch["epoch_hours_cpu"], rel=1e-2)
    for codec in ("float32", "float16", "uint8"):
        assert m["read_derive"][codec][row["resolution"]]["numpy_s"]["median"] > 0

    md = (out / "projection.md").read_text()
    assert "| audio | codec |" in md and "| float32 |" in md and "VGG-CNN 8×10" in md
    assert "not measured" in md and "16 workers h" in md
    with open(out / "projection.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {r["kind"] for r in rows} == {"measured", "projection"}
    assert any(r["section"] == "storage" and r["metric"] == "materialised_gb" for r in rows)
    assert not list(out.glob(".tmp-*"))  # atomic writes left no temp files


def test_measured_runner_efficiency_drives_the_projection():
    """Without --parallel_efficiency the DaskRunner's measured efficiency is the one projected."""
    measured = {"extraction": {"mp3/float32": {"total_s_per_clip": 1.0,
                                               "total_cpu_s_per_clip": 0.8}},
                "storage": {"codecs": {}}, "training": [],
                "runners": {"efficiency": 0.5, "workers": 2, "clips": 16}}
    settings = scale.Settings(num_clips=3600, workers=(1, 4))
    p = scale.project(measured, settings)
    assert p["parallel_efficiency"] == 0.5 and p["parallel_efficiency_source"].startswith("measured")
    assert p["extraction"]["mp3/float32"]["wall_hours"] == {"1": 1.0, "4": 0.5}  # 1 h / (4 × 0.5)
    given = scale.project(measured, dataclasses.replace(settings, parallel_efficiency=1.0))
    assert given["extraction"]["mp3/float32"]["wall_hours"]["4"] == 0.25
    measured["runners"] = None
    assumed = scale.project(measured, settings)
    assert assumed["parallel_efficiency"] == 0.9 and assumed["parallel_efficiency_source"] == "assumed"
