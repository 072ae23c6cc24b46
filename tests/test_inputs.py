"""Bad input and faults across the commands and the API: every user-caused error is one line
naming the flag or file (exit 2) and comes before the work; run folders work from anywhere and
after a move; a resumed run refuses what it cannot do; a failed write keeps the old file."""
import json
import os
import re
import shutil
import zipfile

import numpy as np
import pytest
import torch

from omnifast.cli import main as cli_main
from omnifast.data import ImageDataset, SceneDistribution, make_dataset
from omnifast.flame import make_synthetic_flame
from omnifast.gan.models import GeneratorConfig
from omnifast.gan.train import GANConfig, train_gan
from omnifast.runs import RunError, RunFolder, atomic_write
from omnifast.sdf.data import ParamDistribution
from omnifast.sdf.losses import LossWeights
from omnifast.sdf.network import NetworkConfig
from omnifast.sdf.train import TrainConfig, load_run, train

TINY_SDF = NetworkConfig(hidden=16, layers=2, skip=0, frequencies=2, condition=8)
FAST = dict(nrr_initial=16, render=dict(depth_resolution=6, depth_resolution_importance=6), batch=2,
            image_every=1000, checkpoint_every=1000)


def sdf_config(flame, **changes):
    return TrainConfig(flame_dir=str(flame), n_shape=10, n_expr=10, steps=2, batch=1, surface_points=32,
                       space_points=32, network=TINY_SDF, eval_every=2, checkpoint_every=2, eval_meshes=1,
                       eval_points=32, **changes)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("project") / "heads")


def make_project(root):
    """A project folder as a user makes one: FLAME, a stage I run, a dataset and a stage II run,
    each made with relative paths from the project folder itself."""
    root.mkdir()
    cwd = os.getcwd()
    os.chdir(root)
    try:
        make_synthetic_flame("flame")
        train(sdf_config("flame"), "sdf", progress=False, log=lambda *a: None)
        make_dataset("data", "flame", count=6, resolution=32, n_shape=10, n_expr=10, batch=6, progress=False,
                     log=lambda *a: None)
        config = GANConfig.with_preset("tiny", dataset="data", sdf_run="sdf", warp="mesh", steps=2, **FAST)
        train_gan(config, "gan", progress=False)
    finally:
        os.chdir(cwd)
    return root


def error_line(capsys, argv, *fragments):
    """Run the command in this process: it must exit 2 with one line naming each fragment (after
    argparse's usage, for a flag's own type)."""
    capsys.readouterr()
    try:
        code, parsed = cli_main([str(a) for a in argv]), True
    except SystemExit as exit:
        code, parsed = exit.code, False
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines and (len(lines) == 1 or not parsed), lines
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    return lines[-1]


# ---- run folders from anywhere, and moved

def test_runs_record_their_paths_and_work_after_a_move(project, tmp_path, monkeypatch, capsys):
    gan = json.loads((project / "gan" / "config.json").read_text())
    sdf = json.loads((project / "sdf" / "config.json").read_text())
    assert gan["relative_paths"] == {"dataset": "../data", "sdf_run": "../sdf"}
    assert (gan["dataset"], sdf["flame_dir"]) == (str(project / "data"), str(project / "flame"))  # made relative
    assert sdf["relative_paths"] == {"flame_dir": "../flame"}
    moved = make_project(tmp_path / "heads")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # neither the old folder nor the project's
    shutil.move(str(moved), str(tmp_path / "heads-moved"))
    run = tmp_path / "heads-moved" / "gan"
    assert cli_main(["generate", str(run), "--seeds", "0", "--out", "front.png", "--device", "cpu"]) == 0
    assert (elsewhere / "front.png").is_file()
    assert cli_main(["train-gan", "--out", str(run), "--resume", "--steps", "3", "--no-progress",
                     "--device", "cpu"]) == 0
    assert load_run(str(tmp_path / "heads-moved" / "sdf")).flame.layout.n_shape == 10
    # The checkpoint's copy of the settings reads back absolute, from the moved folder.
    state = RunFolder(str(run)).load_checkpoint()
    assert state["config"]["dataset"] == str(tmp_path / "heads-moved" / "data")


def test_a_run_copied_out_of_its_project_finds_a_shared_dataset(project, tmp_path):
    from omnifast.runs import read_settings

    config = GANConfig.with_preset("tiny", dataset=str(project / "data"), sdf_run=str(project / "sdf"), warp="mesh",
                                   steps=1, **FAST)
    train_gan(config, str(tmp_path / "runs" / "one"), progress=False)
    shutil.copytree(tmp_path / "runs" / "one", tmp_path / "elsewhere" / "deeper" / "one")
    train_gan(None, str(tmp_path / "elsewhere" / "deeper" / "one"), resume=True, steps=2, progress=False)
    state = RunFolder(str(tmp_path / "elsewhere" / "deeper" / "one")).load_checkpoint()
    assert state["step"] == 2 and state["config"]["dataset"] == str(project / "data")
    # A run's config.json given as --config: its paths resolve from its own folder.
    settings = read_settings(str(tmp_path / "runs" / "one" / "config.json"))
    assert "relative_paths" not in settings and GANConfig.from_dict(settings).sdf_run == str(project / "sdf")


# ---- resuming

def test_resume_says_when_nothing_is_left_and_never_shortens_a_run(project, tmp_path, capsys):
    shutil.copytree(project, tmp_path / "heads")
    run, sdf = tmp_path / "heads" / "gan", tmp_path / "heads" / "sdf"
    config_before = (run / "config.json").read_text()
    error_line(capsys, ["train-gan", "--out", run, "--resume", "--device", "cpu", "--no-progress"],
               "nothing left to train", "all of its 2 steps", "--steps above 2")
    error_line(capsys, ["train-gan", "--out", run, "--resume", "--steps", "1", "--device", "cpu"],
               "has done 2 steps, more than --steps 1")
    assert (run / "config.json").read_text() == config_before
    error_line(capsys, ["train-gan", "--out", run, "--resume", "--steps", "4", "--lr-g", "0.01", "--device", "cpu"],
               "the run has lr_g=0.0025", "got 0.01")
    # Stage I alike.
    error_line(capsys, ["train-sdf", "--out", sdf, "--resume", "--device", "cpu", "--no-progress"],
               "nothing left to train")
    error_line(capsys, ["train-sdf", "--out", sdf, "--resume", "--steps", "1", "--device", "cpu"],
               "more than --steps 1")


def test_a_new_stage_one_run_refuses_a_folder_of_something_else(project, tmp_path, capsys):
    for folder in (project / "gan", project / "data"):
        before = sorted(os.listdir(folder))
        error_line(capsys, ["train-sdf", "--flame-dir", project / "flame", "--out", folder, "--steps", "1",
                            "--device", "cpu", "--no-progress"], "is not empty and not a stage I run")
        assert sorted(os.listdir(folder)) == before


# ---- inputs that are nonsense

def test_a_dataset_made_with_another_flame_model_is_refused(project, tmp_path):
    make_synthetic_flame(str(tmp_path / "other"), seed=1)
    make_dataset(str(tmp_path / "data"), str(tmp_path / "other"), count=2, resolution=32, n_shape=10, n_expr=10,
                 progress=False, log=lambda *a: None)
    config = GANConfig.with_preset("tiny", dataset=str(tmp_path / "data"), sdf_run=str(project / "sdf"), steps=1,
                                   **FAST)
    with pytest.raises(RunError, match="another FLAME model than the stage I run"):
        train_gan(config, str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def _rewrite_labels(src, dst, change):
    shutil.copytree(src, dst)
    meta = json.loads((dst / "dataset.json").read_text())
    change(meta["labels"][1][1])
    (dst / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("what, change, message", [
    ("a scaled rotation", lambda v: v.__setitem__(0, v[0] * 2),
     "row 1 (00000/img00000001.png) has a cam2world rotation that is not a rotation"),
    ("a reflection", lambda v: [v.__setitem__(i, -v[i]) for i in (0, 4, 8)], "not a rotation"),
    ("a zero focal length", lambda v: v.__setitem__(16, 0.0), "focal lengths are not positive"),
    ("a bad bottom row", lambda v: v.__setitem__(15, 2.0), "bottom row other than 0 0 0 1"),
    ("an expression of 1e30", lambda v: v.__setitem__(25 + 10, 1e30),
     "FLAME expression[0] of row 1 (00000/img00000001.png) is 1e+30"),
])
def test_dataset_labels_that_are_no_camera_or_head_are_refused(project, tmp_path, what, change, message):
    _rewrite_labels(project / "data", tmp_path / "data", change)
    with pytest.raises(ValueError, match=re.escape(message)):
        ImageDataset(str(tmp_path / "data"))


def test_the_renderer_and_sample_refuse_bad_labels_dtypes_and_empty_batches(project):
    from omnifast.gan.generate import HeadGenerator

    G = HeadGenerator(str(project / "gan")).G
    renderer, decoder = G.renderer, G.decoder
    labels = ImageDataset(str(project / "data")).labels[:2]
    planes = torch.zeros(2, 3, G.config.grid_channels, G.config.triplane_depth, 8, 8)
    bad = labels.clone()
    bad[0, :3] *= 3  # a scaled rotation
    with pytest.raises(ValueError, match="labels: row 0 has a cam2world rotation that is not a rotation"):
        renderer(planes, decoder, bad, 4)
    bad = labels.clone()
    bad[1, 25 + 10] = 1e30
    with pytest.raises(ValueError, match=r"FLAME expression\[0\] of row 1 is 1e\+30"):
        G(torch.zeros(2, G.config.z_dim), bad)
    with pytest.raises(ValueError, match="planes must be a floating-point tensor, got torch.int64"):
        renderer(planes.long(), decoder, labels, 4)
    with pytest.raises(ValueError, match="at least one image's label"):
        renderer(planes[:0], decoder, labels[:0], 4)
    params = labels[:, 25:]
    with pytest.raises(ValueError, match=r"points must be a floating-point \[N, M, 3\] tensor with N, M >= 1"):
        renderer.sample(planes, decoder, torch.zeros(2, 0, 3), params)
    with pytest.raises(ValueError, match="points must be a floating-point"):
        renderer.sample(planes, decoder, torch.zeros(2, 5, 3, dtype=torch.int32), params)
    with pytest.raises(ValueError, match="params must be a floating-point tensor"):
        renderer.sample(planes, decoder, torch.zeros(2, 5, 3), params.long())
    colour, delta, prior = renderer.sample(planes, decoder, torch.zeros(2, 5, 3), params)
    assert colour.shape[:2] == delta.shape[:2] == prior.shape == (2, 5)


def test_images_of_mixed_sizes_and_a_truncated_zip_are_named(project, tmp_path):
    from PIL import Image

    mixed = tmp_path / "mixed"
    shutil.copytree(project / "data", mixed)
    dataset = ImageDataset(str(mixed))
    Image.new("RGB", (16, 16)).save(mixed / dataset.files[3])
    with pytest.raises(ValueError, match=f"image {dataset.files[3]} is 16x16, the dataset's images are 32x32"):
        ImageDataset(str(mixed))  # found when the dataset is opened, before any training
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in [*dataset.files, "dataset.json"]:
            z.write(project / "data" / name, name)
    data = archive.read_bytes()
    (tmp_path / "cut.zip").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="cut.zip: not a readable zip"):
        ImageDataset(str(tmp_path / "cut.zip"))


@pytest.mark.parametrize("argv, fragments", [
    (["generate", "{gan}", "--out", "{tmp}/x.jpg"], ["--out must end in .png", "x.jpg"]),
    (["generate", "{gan}", "--out", "{tmp}/x.png", "--mesh", "{tmp}/m.obj"], ["--mesh must end in .ply"]),
    (["generate", "{gan}", "--out", "{tmp}/x.png", "--sweep", "jaw", "--video", "{tmp}/v.avi"],
     ["--video must end in .mp4 or .gif"]),
    (["eval-gan", "{gan}", "--json", "{tmp}/r.txt"], ["--json must end in .json"]),
    (["export-sdf", "{sdf}", "--out", "{tmp}/m.stl"], ["--out must end in .ply"]),
    (["export-sdf", "{sdf}", "--out", "{tmp}/m.ply", "--previews", "{tmp}/p.jpg"], ["--previews must end in .png"]),
    (["eval-sdf", "{sdf}", "--json", "{tmp}/m.csv"], ["--json must end in .json"]),
    (["bench", "triplane", "--json", "{tmp}/b.txt"], ["--json must end in .json"]),
    (["generate", "{gan}", "--out", "{tmp}/file.txt/x.png"], ["is a file, so no folder can be made there"]),
    (["generate", "{gan}", "--out", "{tmp}"], ["is a folder; give a file name"]),
    (["generate", "{gan}", "--out", "{tmp}/x.png", "--params", "expression=1e30"],
     ["FLAME expression[0] of row 0 is 1e+30"]),
    (["generate", "{gan}", "--out", "{tmp}/x.png", "--seeds", "18446744073709551616"], ["[0, 2^63)"]),
    (["generate", "{gan}", "--out", "{tmp}/x.png", "--seeds", "0-99999999"], ["names 100000000 seeds; at most"]),
    (["generate", "{gan}", "--out", "{tmp}/x.png", "--mesh", "{tmp}/m.ply", "--mesh-resolution", "100000"],
     ["--mesh-resolution 100000", "GiB", "is available"]),
    (["export-sdf", "{sdf}", "--out", "{tmp}/m.ply", "--resolution", "50000"], ["--resolution 50000", "GiB"]),
    (["make-dataset", "{tmp}/big", "--flame-dir", "{flame}", "--count", "100000", "--resolution", "100000"],
     ["GiB", "is available"]),
    (["eval-gan", "{gan}", "--quality-images", "1", "--samples", "1"],
     ["--quality-images 1", "at least 2 images"]),
    (["generate", "{gan}", "--out", "{tmp}/x.png", "--device", "cuda"], ["--device cuda: this machine has no CUDA"]),
    (["train-gan", "--out", "{tmp}/run", "--data", "{data}", "--sdf-run", "{sdf}", "--device", "tpu"],
     ["--device must be cpu, cuda or cuda:N, got 'tpu'"]),
    (["generate", "{gan}", "--out", "{tmp}/x.png", "--truncation", "nan"], ["--truncation must be a finite number"]),
    (["eval-gan", "{gan}", "--seed", "-1"], ["argument --seed", "[0, 9223372036854775808)"]),
    (["make-dataset", "{tmp}/d", "--flame-dir", "{flame}", "--seed", "99999999999999999999"], ["argument --seed"]),
    (["make-flame", "{tmp}/f", "--seed", "-1"], ["argument --seed"]),
    (["make-flame", "{sdf}"], ["is not empty", "synthetic FLAME model"]),
    (["eval-sdf", "{sdf}", "--json", "{sdf}/config.json"], ["is a run's own file"]),
    (["eval-sdf", "{sdf}", "--meshes", "100000000"], ["--meshes 100000000", "GiB"]),
    (["eval-gan", "{gan}", "--samples", "100000000"], ["--samples 100000000", "GiB"]),
    (["export-sdf", "{sdf}", "--out", "{tmp}/m.ply", "--previews", "{tmp}/p.png", "--preview-size", "100000"],
     ["--preview-size 100000", "GiB"]),
    (["train-gan", "--out", "{sdf}", "--resume", "--device", "cpu"], ["is not a stage II run"]),
    (["train-gan", "--out", "{tmp}/run", "--data", "{data}", "--sdf-run", "{sdf}", "--device", "cpu",
      "--nrr-final", "64"], ["nrr_final 64 exceeds the dataset's images (32^2)"]),
    (["demo", "--out", "{data}"], ["is not empty and not a demo folder"]),
    (["demo", "--out", "{tmp}/demo", "--gan-config", "{tmp}/missing.json"], ["missing.json: no such settings file"]),
])
def test_user_errors_are_one_line_before_any_work(project, tmp_path, capsys, argv, fragments):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    (tmp_path / "file.txt").write_text("a file")
    names = dict(gan=project / "gan", sdf=project / "sdf", data=project / "data", flame=project / "flame", tmp=tmp_path)
    before = sorted(os.listdir(tmp_path))
    error_line(capsys, [a.format(**names) for a in argv], *fragments)
    assert sorted(os.listdir(tmp_path)) == before  # nothing was written


def test_a_copied_run_keeps_its_own_data_and_refuses_another_process_count(project, tmp_path, capsys):
    # Copied next to other data, a run keeps what it recorded (while that exists).
    copy = tmp_path / "other" / "gan"
    shutil.copytree(project / "gan", copy)
    make_dataset(str(tmp_path / "other" / "data"), str(project / "flame"), count=2, resolution=32, n_shape=10,
                 n_expr=10, seed=5, progress=False, log=lambda *a: None)
    assert RunFolder(str(copy)).read_config()["dataset"] == str(project / "data")
    state = RunFolder(str(copy)).load_checkpoint()
    state["meta"]["processes"] = 2
    RunFolder(str(copy)).save_checkpoint(state)
    error_line(capsys, ["train-gan", "--out", copy, "--resume", "--steps", "3", "--device", "cpu"],
               "trained by 2 process(es)", "--nproc_per_node 2")


def test_only_a_runs_own_temporaries_are_cleaned_and_the_generator_checks_first(project, tmp_path, capsys):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex.tmp4242").write_text("keep")
    error_line(capsys, ["train-gan", "--out", mine, "--data", project / "data", "--sdf-run", project / "sdf",
                        "--device", "cpu"], "not a stage II run")
    assert (mine / "thesis.tex.tmp4242").read_text() == "keep"
    from omnifast.gan.generate import HeadGenerator

    G = HeadGenerator(str(project / "gan")).G
    labels = ImageDataset(str(project / "data")).labels[:2]
    before = G.backbone.mapping.w_avg.clone()
    bad = labels.clone()
    bad[0, 3] = float("nan")
    for z, c, message in ((torch.zeros(2, G.config.z_dim), bad, "not finite"),
                          (torch.zeros(3, G.config.z_dim), labels, "the N of the labels"),
                          (torch.zeros(2, G.config.z_dim, dtype=torch.float64), labels, "one dtype")):
        with pytest.raises(ValueError, match=message):
            G(z, c, update_emas=True)
    with pytest.raises(ValueError, match="truncation_psi must be a finite number"):
        G.mapping(torch.zeros(2, G.config.z_dim), labels, truncation_psi=float("nan"))
    assert torch.equal(G.backbone.mapping.w_avg, before)


def test_a_full_disk_during_a_checkpoint_keeps_the_last_one(project, tmp_path, monkeypatch, capsys):
    shutil.copytree(project, tmp_path / "heads")
    run = tmp_path / "heads" / "gan"
    before = (run / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if not isinstance(f, str):  # torch's own report: its message, the OSError as the context
            f.write(b"partial")
            try:
                raise OSError(28, "No space left on device")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 606400 vs 606292")  # noqa: B904 (as torch: the OSError is the context)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    error_line(capsys, ["train-gan", "--out", run, "--resume", "--steps", "3", "--device", "cpu", "--no-progress"],
               "checkpoint.pt: could not be written", "No space left on device", "the file already there is kept")
    assert (run / "checkpoint.pt").read_bytes() == before
    assert not [name for name in os.listdir(run) if ".tmp" in name]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), RuntimeError("file write failed")])
def test_atomic_writes_name_the_file_and_keep_the_old_one(tmp_path, error):
    path = tmp_path / "grid.png"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise error

    with pytest.raises(OSError, match=r"grid.png: could not be written \(.*\); the file already there is kept"):
        atomic_write(str(path), fail)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["grid.png"]
    with pytest.raises(ValueError, match="a programming error"):  # not a write failure: not disguised as one
        atomic_write(str(path), lambda f: (_ for _ in ()).throw(ValueError("a programming error")))


def test_running_out_of_memory_is_one_line(monkeypatch, capsys):
    from omnifast import cli

    def exhausted(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1099511627776 bytes.")

    parser, handlers = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: (parser, {**handlers, "info": exhausted}))
    line = error_line(capsys, ["info"], "out of memory", "can't allocate memory", "lower the resolution")
    assert line.startswith("omnifast info:")
    monkeypatch.setattr(cli, "build_parser", lambda: (parser, {**handlers, "info": lambda a: np.zeros(2)[5]}))
    with pytest.raises(IndexError):  # a defect is not disguised as a user error
        cli_main(["info"])


@pytest.mark.parametrize("make, message", [
    (lambda: SceneDistribution(radius=0),
     "SceneDistribution: radius must be a finite number > 0, got 0"),
    (lambda: SceneDistribution(pivot=(0, float("nan"), 0)),
     "SceneDistribution: pivot must be None or three finite numbers"),
    (lambda: LossWeights(normal=float("nan")),
     "LossWeights: normal must be a finite number >= 0, got nan"),
    (lambda: ParamDistribution(jaw_open_max=-0.1),
     "ParamDistribution: jaw_open_max must be a finite number >= 0, got -0.1"),
    (lambda: NetworkConfig(frequencies=True), "NetworkConfig: frequencies must be an integer >= 0, got True"),
    (lambda: GeneratorConfig(sr_input_resolution=48),
     r"GeneratorConfig: sr_input_resolution must be 0 \(EG3D's\) or a power of two >= 4, got 48"),
])
def test_settings_classes_refuse_bad_values_by_name(make, message):
    """A NaN weight would silently switch its loss off; a string would fail far from its setting."""
    with pytest.raises(ValueError, match=message):
        make()
