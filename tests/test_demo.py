"""``omnifast demo`` runs the whole system end to end on a tiny configuration: every stage writes
what it should, ``demo.json`` holds each stage's numbers and ``index.html`` shows them."""
import json
import re

import imageio.v2 as imageio
import pytest

from omnifast.cli import main as cli_main

from conftest import CUDA_READY, CUDA_SKIP_REASON


# Every stage on the device it is given: the CUDA run catches a CPU tensor meeting a GPU one
# anywhere from the dataset's renderer to the control evaluation.
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not CUDA_READY, reason=CUDA_SKIP_REASON)])])
def test_demo_end_to_end_on_a_tiny_configuration(tmp_path, capsys, device):
    out = tmp_path / "demo"
    # The exact FLAME prior as stage II's warp: a 3-step stage I network is no head yet.
    gan_config = tmp_path / "gan.json"
    gan_config.write_text(json.dumps({"warp": "mesh", "nrr_initial": 16, "batch": 2,
                                      "render": {"depth_resolution": 6, "depth_resolution_importance": 6}}))
    assert cli_main(["demo", "--out", str(out), "--steps", "3", "--batch", "1", "--surface-points", "64",
                     "--space-points", "64", "--n-shape", "10", "--n-expr", "10", "--eval-meshes", "1",
                     "--resolution", "24", "--preview-size", "32", "--images", "8", "--image-resolution", "32",
                     "--gan-steps", "2", "--gan-config", str(gan_config), "--seeds", "0-1", "--frames", "3",
                     "--eval-samples", "1", "--quality-images", "4", "--bench", "quick", "--device", device,
                     "--no-progress"]) == 0
    for name in ("flame/FLAME_NEUTRAL.pkl", "sdf-run/checkpoint.pt", "sdf-run/eval.json", "sdf_head.ply",
                 "sdf_previews.png", "data/dataset.json", "dataset.png", "gan-run/checkpoint.pt",
                 "gan-run/images/step000002.png", "generated/front.png", "generated/front_depth.png",
                 "generated/head.ply", "generated/head_canonical.ply", "generated/expression.png",
                 "generated/jaw.mp4", "generated/yaw.mp4", "bench.json", "demo.json", "index.html"):
        assert (out / name).is_file(), name
    frames = imageio.mimread(out / "generated" / "jaw.mp4")
    assert len(frames) == 3 and frames[0].shape[:2] == (32, 2 * 32)  # the seeds side by side
    summary = json.loads((out / "demo.json").read_text())
    assert summary["device"] == device
    assert summary["stage_one"]["steps"] == 3 and summary["stage_one"]["metrics"]["meshes"] == 1
    assert summary["stage_one"]["passed"] is False
    assert summary["dataset"]["count"] == 8 and summary["stage_two"]["steps"] == 2
    assert summary["stage_two"]["config"]["generator"]["background"] is True  # for the data's backgrounds
    fd = summary["stage_two"]["fd_random"]  # G_ema's quality proxy at the start (step 0) and the end
    assert set(fd["by_step"]) == {"0", "1", "2"} and fd["start"] == fd["by_step"]["0"] > 0
    assert fd["end_over_start"] == fd["by_step"]["2"] / fd["start"]
    # A second demo into the same folder replaces its own files; a folder of the user's is refused.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert cli_main(["demo", "--out", str(tmp_path / "mine"), "--device", "cpu"]) == 2
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    assert set(summary["stage_seconds"]) == {str(n) for n in range(1, 9)}
    assert summary["control"]["samples"] == 1 and summary["control"]["quality"]["images"] == 4
    # The exact prior: near the FLAME mesh after two iterations (as in test_gan's eval-gan test).
    # Adam's first steps move every weight by about the learning rate, so two of them can shift
    # the whole surface by about a centimetre (10.8 mm with the background network; 3.3 without).
    surface = summary["control"]["geometry"]["surface_mm"]
    assert surface["p95"] < 15 and surface["p95"] - surface["mean"] < 5
    assert {row["op"] for row in summary["bench"]} >= {"triplane_sample", "composite", "closest_point"}
    assert all(row["speedup"] > 0 for row in summary["bench"])
    page = (out / "index.html").read_text()
    for name in re.findall(r'src="([^"]+)"', page):  # every image and video the page shows exists
        assert (out / name).is_file(), name
    assert 'src="generated/jaw.mp4"' in page and "face depth vs the posed FLAME mesh" in page
    printed = capsys.readouterr().out
    assert "== 8/8 kernel benchmarks" in printed and "demo finished" in printed


def test_demo_and_generate_refuse_mp4_without_its_writer_before_any_work(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if imageio-ffmpeg were not installed
    assert cli_main(["demo", "--out", str(tmp_path / "demo"), "--device", "cpu", "--no-progress"]) == 2
    assert not (tmp_path / "demo").exists()  # refused before the first stage
    assert cli_main(["generate", str(tmp_path / "run"), "--out", str(tmp_path / "grid.png"), "--sweep", "jaw",
                     "--video", str(tmp_path / "jaw.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.count("writing MP4 needs the imageio-ffmpeg package") == 2, err
    assert "or give a .gif" in err
