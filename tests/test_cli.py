"""The fid-metric command: against pytorch-fid's own folder pipeline, statistics files, bad input, exit codes."""

from __future__ import annotations

import json
import os
import pickle
import re
import time
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PythonProcess, launcher_variables, relative, smooth_images
from PIL import EpsImagePlugin, Image
from pytorch_fid import inception as pfid_inception
from pytorch_fid.fid_score import calculate_fid_given_paths

from fid_metric import FeatureStats, FrechetInceptionDistance, frechet_distance
from fid_metric._cli.main import main
from fid_metric._features.weights import sha256_of
from fid_metric._files.image_folder import BadImage, ImageFiles, list_images, read_image
from fid_metric._files.sample_batch import SampleBatch

# 5-6 images give singular 64-dimensional covariances; the metric says so, and that is not under test here.
pytestmark = pytest.mark.filterwarnings("ignore:FID from")

N_A, N_B = 6, 5


def _write(folder: Path, imgs: torch.Tensor | list[torch.Tensor], prefix: str = "img") -> Path:
    """Save ``(3, H, W)`` uint8 images as ``folder/{prefix}_{i:03d}.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(imgs):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{prefix}_{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    return smooth_images(N_A, 64, seed=100), smooth_images(N_B, 64, seed=200)


@pytest.fixture(scope="module")
def folders(images, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    return _write(root / "a", images[0]), _write(root / "b", images[1])


def _run(capsys: pytest.CaptureFixture, *args: object, weights: Path | None = None) -> tuple[int, str, str]:
    """``main([...])`` in-process on the CPU without workers; returns (exit code, stdout, stderr)."""
    argv = [str(a) for a in args]
    if weights is not None:
        argv += ["--weights", str(weights), "--device", "cpu", "--workers", "0"]
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _score(capsys, a, b, weights, *options: str) -> dict:
    code, out, err = _run(capsys, "score", a, b, "--json", "--no-progress", *options, weights=weights)
    assert code == 0, err
    return json.loads(out)


def _assert_one_line_error(err: str, *fragments: str) -> None:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fid-metric: error: "), err
    for fragment in fragments:
        assert fragment in lines[0]


def test_pytorch_fid_compat_matches_pytorch_fid_on_folders(folders, inception_weights, monkeypatch, capsys) -> None:
    """`--compat pytorch-fid` on two PNG folders equals pytorch-fid's calculate_fid_given_paths to 1e-4."""
    state = torch.load(inception_weights, weights_only=True)
    monkeypatch.setattr(pfid_inception, "load_state_dict_from_url", lambda *a, **k: state)
    a, b = folders
    ours = _score(capsys, a, b, inception_weights, "--compat", "pytorch-fid", "--feature", "64")
    reference = float(calculate_fid_given_paths([str(a), str(b)], 50, "cpu", 64, num_workers=0))
    assert reference > 1e-3, "degenerate features: the test would prove nothing"
    assert relative(ours["fid"], reference) <= 1e-4


def test_json_output_and_stats_files_give_the_same_fid(folders, inception_weights, tmp_path, capsys) -> None:
    """folder/folder, stats/folder, folder/stats and stats/stats agree; `stats` writes the right metadata."""
    a, b = folders
    code, out, err = _run(capsys, "score", a, b, "--json", "--feature", "64", weights=inception_weights)
    assert code == 0, err
    direct = json.loads(out)
    keys = {"fid", "n_a", "n_b", "found_a", "found_b", "compat", "extractor", "feature_dim", "processes", "seconds"}
    assert set(direct) == keys
    assert direct["processes"] == 1
    assert (direct["n_a"], direct["n_b"], direct["compat"], direct["feature_dim"]) == (N_A, N_B, "tensorflow", 64)
    assert direct["fid"] > 1e-3 and direct["seconds"] >= 0
    assert f"{N_A}/{N_A}" in err and "img/s" in err, "the progress bar counts images"

    ref_a, ref_b = tmp_path / "a.npz", tmp_path / "b.npz"
    for folder, ref in ((a, ref_a), (b, ref_b)):
        code, out, err = _run(
            capsys, "stats", folder, "-o", ref, "--feature", "64", "--no-progress", weights=inception_weights
        )
        assert code == 0, err
        assert str(ref) in out
    with np.load(ref_a) as data:
        assert str(data["compat"]) == "tensorflow"
        assert str(data["extractor"]) == "inception-2015-12-05/64"
        assert str(data["weights_sha256"]) == sha256_of(inception_weights)
        assert int(data["n"]) == N_A

    from_stats = _score(capsys, ref_a, b, inception_weights, "--feature", "64")
    swapped = _score(capsys, b, ref_a, inception_weights, "--feature", "64")
    both = _score(capsys, ref_a, ref_b, inception_weights)
    assert (from_stats["n_a"], from_stats["n_b"], swapped["n_a"], swapped["n_b"]) == (N_A, N_B, N_B, N_A)
    assert (both["n_a"], both["n_b"], both["compat"], both["feature_dim"]) == (N_A, N_B, "tensorflow", 64)
    for result in (from_stats, swapped, both):
        assert relative(result["fid"], direct["fid"]) <= 1e-9


def test_mean_and_covariance_only_file_has_no_count(tmp_path, capsys) -> None:
    """A pytorch-fid style file (mu, sigma) works as either side once --compat says what it holds; its count is
    null; plain output is the FID, the definition on stderr."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 8, generator=g, dtype=torch.float64), torch.randn(40, 8, generator=g, dtype=torch.float64)
    stats_x, stats_y = FeatureStats.from_features(x), FeatureStats.from_features(y + 0.5, compat="pytorch-fid")
    np.savez(tmp_path / "x.npz", mu=stats_x.mean.numpy(), sigma=stats_x.covariance.numpy())
    stats_y.save(tmp_path / "y.npz")
    expected = float(frechet_distance(stats_x.mean, stats_x.covariance, stats_y.mean, stats_y.covariance))
    code, out, err = _run(capsys, "score", tmp_path / "x.npz", tmp_path / "y.npz")
    assert code == 2 and out == ""
    _assert_one_line_error(err, "x.npz does not record which definition of FID it holds", "--compat")
    code, out, _ = _run(capsys, "score", tmp_path / "x.npz", tmp_path / "y.npz", "--json", "--compat", "pytorch-fid")
    result = json.loads(out)
    assert code == 0 and (result["n_a"], result["n_b"], result["compat"]) == (None, 40, "pytorch-fid")
    assert relative(result["fid"], expected) <= 1e-12
    code, out, err = _run(capsys, "score", tmp_path / "y.npz", tmp_path / "x.npz", "--compat", "pytorch-fid")
    assert code == 0 and relative(float(out), expected) <= 1e-12
    assert "fid-metric: definition: compat=pytorch-fid (pytorch-fid)" in err
    code, _, err = _run(capsys, "score", tmp_path / "y.npz", tmp_path / "x.npz", "--compat", "tensorflow")
    assert code == 2  # y.npz records pytorch-fid: a contradicting statement is refused
    _assert_one_line_error(err, "records compat='pytorch-fid' statistics, not the compat='tensorflow'")


def test_bad_image_fails_or_is_skipped(images, folders, inception_weights, tmp_path, capsys) -> None:
    """A garbage .png: exit 2 naming it; with --skip-bad-images (decoded in 2 workers) the FID without it."""
    a = _write(tmp_path / "a", images[0])
    bad = a / "bad.png"
    bad.write_bytes(b"this is not a PNG" * 10)
    b = folders[1]
    code, _, err = _run(capsys, "score", a, b, "--feature", "64", "--no-progress", weights=inception_weights)
    assert code == 2
    _assert_one_line_error(err, str(bad), "--skip-bad-images")

    argv = ["score", a, b, "--json", "--feature", "64", "--no-progress", "--skip-bad-images"]
    code, out, err = _run(capsys, *argv, "--weights", inception_weights, "--device", "cpu", "--workers", "2")
    assert code == 0, err
    assert f"skipping {bad}" in err and f"A: {N_A} images in {a} (1 unreadable file skipped)" in err
    skipped = json.loads(out)
    metric = FrechetInceptionDistance(64, feature_extractor_weights_path=inception_weights)
    metric.update(images[0], real=True)
    metric.update(images[1], real=False)
    assert skipped["n_a"] == N_A
    assert relative(skipped["fid"], float(metric.compute())) <= 1e-6


def test_mixed_sizes_equal_one_image_at_a_time(folders, images, inception_weights, tmp_path, capsys) -> None:
    """A folder of several sizes, split over batches of 4, equals feeding the metric one image at a time."""
    sizes = [48, 48, (40, 64), 48, (64, 40), (64, 40), (64, 40), 52, 52]
    mixed = [smooth_images(1, size, seed=300 + i)[0] for i, size in enumerate(sizes)]
    a = _write(tmp_path / "mixed", mixed)
    result = _score(capsys, a, folders[1], inception_weights, "--feature", "64", "--batch-size", "4")
    metric = FrechetInceptionDistance(64, feature_extractor_weights_path=inception_weights)
    for img in mixed:
        metric.update(img[None], real=True)
    metric.update(images[1], real=False)
    assert result["n_a"] == len(sizes)
    assert relative(result["fid"], float(metric.compute())) <= 1e-6


def _bad_inputs(root: Path, weights: Path) -> dict[str, tuple[list[object], str]]:
    """Named bad command lines and a fragment their error line must hold."""
    good = _write(root / "good", smooth_images(2, 16, seed=1))
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images here")
    one = _write(root / "one", smooth_images(1, 16, seed=2))
    (root / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    FeatureStats.from_features(torch.randn(5, 64, dtype=torch.float64)).save(root / "full.npz")
    (root / "truncated.npz").write_bytes((root / "full.npz").read_bytes()[:300])
    np.savez(root / "no_mu.npz", mean=np.zeros(3))
    (root / "image.png").write_bytes(b"")
    tf64 = FeatureStats.from_features(torch.randn(5, 64, dtype=torch.float64), compat="tensorflow")
    tf64.save(root / "tf64.npz")
    tm64 = FeatureStats.from_features(torch.randn(5, 64, dtype=torch.float64), compat="torchmetrics")
    tm64.save(root / "tm64.npz")
    (root / "weights.pth").write_bytes(b"not a state dict")
    FeatureStats.from_features(torch.randn(5, 8, dtype=torch.float64), compat="tensorflow").save(root / "a.npz")
    FeatureStats.from_features(torch.randn(5, 4, dtype=torch.float64), compat="tensorflow").save(root / "a4.npz")
    w = ["--weights", weights, "--device", "cpu", "--workers", "0"]
    return {
        "missing path": (["score", root / "nope", good], "nope does not exist"),
        "empty folder": (["score", good, root / "empty"], "holds 0 image"),
        "one image": (["stats", one, "-o", root / "out.npz"], "holds 1 image"),
        "corrupt npz": (["score", root / "garbage.npz", good], "garbage.npz"),
        "truncated npz": (["score", good, root / "truncated.npz"], "truncated.npz"),
        "npz without mu": (["score", root / "no_mu.npz", good], "'mu' and 'sigma'"),
        "not a folder or npz": (["score", root / "image.png", good], "neither a folder"),
        "stats files disagree": (["score", root / "tf64.npz", root / "tm64.npz"], "compat"),
        "stats files of two dims": (
            ["score", root / "a.npz", root / "a4.npz"],
            f"8 in {root}/a.npz but 4 in {root}/a4",
        ),
        "stats file vs options": (["score", root / "tf64.npz", good, "--feature", "192", *w], "--feature"),
        "weights not a state dict": (["score", good, good, "--weights", root / "weights.pth"], "weights.pth"),
        "output not npz": (["stats", good, "-o", root / "out.txt"], ".npz"),
    }


def test_bad_input_exits_2_with_one_line(inception_weights, tmp_path, capsys) -> None:
    for name, (argv, fragment) in _bad_inputs(tmp_path, inception_weights).items():
        code, out, err = _run(capsys, *argv)
        assert code == 2, name
        assert out == "", name
        _assert_one_line_error(err, fragment)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["score", "a"], "required: B"),
        ([], "required"),
        (["score", "a", "b", "--batch-size", "0"], "--batch-size"),
        (["score", "a", "b", "--batch-size", "65537"], "--batch-size"),
        (["score", "a", "b", "--workers", "-1"], "--workers"),
        (["score", "a", "b", "--device", "nonsense"], "--device"),
        (["score", "a", "b", "--device", "meta"], "--device"),
        (["score", "a", "b", "--device", f"cuda:{torch.cuda.device_count()}"], "--device"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, fragment, capsys) -> None:
    """argparse's errors too, an absurd --batch-size and a device that cannot run anything (meta, a missing GPU)."""
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    _assert_one_line_error(err, fragment)


def test_listing_is_recursive_sorted_and_filtered(tmp_path) -> None:
    names = [
        "b.png",
        "a.PNG",
        "sub/c.jpg",
        "sub/deeper/d.JPEG",
        "e.webp",
        "f.bmp",
        "notes.txt",
        "stats.npz",
        "g.png.bak",
    ]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    expected = ["a.PNG", "b.png", "e.webp", "f.bmp", "sub/c.jpg", "sub/deeper/d.JPEG"]
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == expected


def test_decoding_is_pil_convert_rgb_and_marks_bad_files(tmp_path) -> None:
    """Grey, grey+alpha, RGBA and palette files decode as PIL's convert('RGB'); garbage gives a BadImage."""
    rgb = smooth_images(1, (20, 30), seed=5)[0].permute(1, 2, 0).numpy()
    files = []
    for mode in ("L", "LA", "RGBA", "P", "RGB"):
        path = tmp_path / f"{mode}.png"
        Image.fromarray(rgb).convert(mode).save(path)
        files.append(path)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    dataset = ImageFiles([*files, tmp_path / "bad.png"])
    for i, path in enumerate(files):
        item = dataset[i]
        expected = np.array(Image.open(path).convert("RGB"))
        assert item.dtype == torch.uint8 and item.shape == (3, 20, 30)
        assert torch.equal(item, read_image(path)) and np.array_equal(item.permute(1, 2, 0).numpy(), expected)
    bad = dataset[len(files)]
    assert isinstance(bad, BadImage) and bad.path == str(tmp_path / "bad.png") and "\n" not in bad.error


def _no_forward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any image that reaches the metric fail the test: the checks under test must come first."""

    def update(self, imgs, real):
        raise AssertionError("an image reached the network before the input was checked")

    monkeypatch.setattr(FrechetInceptionDistance, "update", update)


def test_every_header_on_both_sides_is_checked_before_the_first_forward_pass(
    inception_weights, tmp_path, monkeypatch, capsys
) -> None:
    """A broken file in B ends the run before A's first batch, naming it and counting the other bad files."""
    a = _write(tmp_path / "a", smooth_images(2, 16, seed=1))
    b = _write(tmp_path / "b", smooth_images(2, 16, seed=2))
    (b / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but no chunks")
    (b / "empty.jpg").write_bytes(b"")
    _no_forward_pass(monkeypatch)
    code, out, err = _run(capsys, "score", a, b, weights=inception_weights)
    assert code == 2 and out == ""
    _assert_one_line_error(err, str(b / "broken.png"), "1 more", "--skip-bad-images")


def test_eps_named_png_never_reaches_the_eps_plugin_or_ghostscript(
    inception_weights, tmp_path, monkeypatch, capsys
) -> None:
    """A PostScript file named x.png is not a PNG: Pillow must not pick its EPS plugin (which runs Ghostscript)."""
    calls = []

    def eps_open(self):
        calls.append("EpsImageFile._open")
        raise SyntaxError("the EPS plugin was tried")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", eps_open)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append("Ghostscript"))
    folder = _write(tmp_path / "a", smooth_images(2, 16, seed=1))
    eps = folder / "x.png"
    eps.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n")
    item = ImageFiles([eps])[0]
    assert isinstance(item, BadImage) and "not a" in item.error and "PNG" in item.error
    _no_forward_pass(monkeypatch)
    code, _, err = _run(capsys, "score", folder, folder, weights=inception_weights)
    assert code == 2
    _assert_one_line_error(err, str(eps), "not a")
    assert calls == []


def test_found_counts_are_printed_and_bad_files_listed_up_front(inception_weights, tmp_path, capsys) -> None:
    """Per side "A: n images in ..." on stderr and found_a/found_b in --json; skipped files named before the
    first batch; the metric's warnings as one "fid-metric: warning:" line."""
    a = _write(tmp_path / "a", smooth_images(3, 16, seed=1))
    (a / "bad.png").write_bytes(b"not a PNG")
    b = _write(tmp_path / "b", smooth_images(2, 16, seed=2))
    argv = ["score", a, b, "--json", "--feature", "64", "--no-progress", "--skip-bad-images"]
    with warnings.catch_warnings():
        warnings.filterwarnings("default", message="FID from")  # the module's filter hides it
        code, out, err = _run(capsys, *argv, weights=inception_weights)
    assert code == 0, err
    result = json.loads(out)
    assert (result["n_a"], result["found_a"], result["n_b"], result["found_b"]) == (3, 4, 2, 2)
    lines = err.strip().splitlines()
    assert lines[:3] == [
        f"fid-metric: warning: skipping {a / 'bad.png'}: not a readable BMP, JPEG, PNG or WEBP image",
        f"A: 3 images in {a} (1 unreadable file skipped)",
        f"B: 2 images in {b}",
    ], err
    assert lines[3].startswith("fid-metric: warning: FID from") and len(lines) == 4, err


def test_stats_file_side_is_counted(tmp_path, capsys) -> None:
    """A statistics file's side prints its count, or says it has none."""
    FeatureStats.from_features(torch.randn(5, 4, dtype=torch.float64)).save(tmp_path / "x.npz")
    np.savez(tmp_path / "y.npz", mu=np.zeros(4), sigma=np.eye(4))
    code, out, err = _run(capsys, "score", tmp_path / "x.npz", tmp_path / "y.npz", "--json", "--compat", "tensorflow")
    assert code == 0, err
    assert (json.loads(out)["found_a"], json.loads(out)["found_b"]) == (None, None)
    assert err.splitlines() == [
        f"A: statistics of 5 images in {tmp_path / 'x.npz'}",
        f"B: statistics (mean and covariance only) in {tmp_path / 'y.npz'}",
    ]


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder in which no file can be created, even by root (who ignores permission bits)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        return folder
    if not Path("/sys/kernel").is_dir():
        pytest.skip("running as root without /sys: no folder is unwritable")
    return Path("/sys/kernel")


def test_unwritable_output_is_reported_before_any_image_is_read(
    inception_weights, tmp_path, monkeypatch, capsys
) -> None:
    """`stats -o` into a missing folder, onto a folder, or into an unwritable folder: one line, exit 2, up front."""
    folder = _write(tmp_path / "a", smooth_images(2, 16, seed=1))
    (tmp_path / "out.npz").mkdir()
    _no_forward_pass(monkeypatch)
    for output, fragment in [
        (tmp_path / "missing" / "out.npz", "does not exist"),
        (tmp_path / "out.npz", "is a directory"),
        (_unwritable_folder(tmp_path) / "out.npz", "no permission"),
    ]:
        code, out, err = _run(capsys, "stats", folder, "-o", output, weights=inception_weights)
        assert code == 2 and out == "", output
        _assert_one_line_error(err, f"cannot write {output}", fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "out.npz"] + (["read-only"] if os.geteuid() != 0 else [])


def test_missing_weights_message_names_the_option(tmp_path, monkeypatch, capsys) -> None:
    """No weights anywhere and no network: one line that says to pass --weights, exit 1, before any image is read."""
    monkeypatch.delenv("FID_METRIC_WEIGHTS", raising=False)
    monkeypatch.setenv("FID_METRIC_WEIGHTS_URL", "http://127.0.0.1:9/pt_inception-2015-12-05-6726825d.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = _write(tmp_path / "a", smooth_images(2, 16, seed=1))
    _no_forward_pass(monkeypatch)
    code, out, err = _run(capsys, "score", folder, folder)
    assert code == 1 and out == ""
    _assert_one_line_error(err, "--weights", "FID_METRIC_WEIGHTS")


def test_ctrl_c_is_one_line_and_exit_130(folders, inception_weights, monkeypatch, capsys) -> None:
    """Ctrl-C while DataLoader workers decode: "fid-metric: interrupted" on a line of its own, no traceback."""

    def update(self, imgs, real):
        raise KeyboardInterrupt

    monkeypatch.setattr(FrechetInceptionDistance, "update", update)
    argv = ["score", *folders, "--weights", inception_weights, "--device", "cpu", "--workers", "2"]
    try:
        code, out, err = _run(capsys, *argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main()")
    assert code == 130 and out == ""
    assert "Traceback" not in err and err.endswith("\nfid-metric: interrupted\n"), err


def test_listing_follows_symlinked_folders_once_and_reports_unreadable_ones(tmp_path, monkeypatch, capsys) -> None:
    """A linked folder is listed, a link back up is not followed, a folder reached twice is listed once, a broken
    link is listed (to be reported); a folder that cannot be listed is an error, not a silent omission."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for name in ("root/a/x.png", "root/a/y.png", "root/c/z.png", "outside/w.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (root / "a" / "loop").symlink_to(root)
    (root / "b").symlink_to(root / "a")
    (root / "ext").symlink_to(outside)
    (root / "dangling.png").symlink_to(tmp_path / "nothing.png")
    expected = ["a/x.png", "a/y.png", "c/z.png", "dangling.png", "ext/w.png"]
    assert [p.relative_to(root).as_posix() for p in list_images(root)] == expected

    scandir = os.scandir

    def unreadable_c(path):
        if Path(path).name == "c":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", unreadable_c)
    with pytest.raises(PermissionError, match="Permission denied"):
        list_images(root)
    code, _, err = _run(capsys, "score", root, root)
    assert code == 2
    _assert_one_line_error(err, f"cannot list folder {root / 'c'}: Permission denied")


# --- ADM-style sample batches (.npz with arr_0) as input (issue #11, part 5) ---


def _sample_batch(path: Path, imgs: torch.Tensor, compressed: bool = False, **extra: np.ndarray) -> Path:
    """``numpy.savez(path, arr_0=(N, H, W, 3) uint8)``, as guided-diffusion, DiT and EDM write their samples."""
    save = np.savez_compressed if compressed else np.savez
    save(path, arr_0=imgs.permute(0, 2, 3, 1).numpy(), **extra)
    return path


def test_sample_batches_give_the_folders_fid(folders, images, inception_weights, tmp_path, capsys) -> None:
    """The same images as a folder of PNGs, as a stored and as a compressed arr_0 batch: the same FID to 1e-12
    (PNG is lossless; the batches are the same), the counts in --json; `stats` takes a sample batch too."""
    a, b = folders
    direct = _score(capsys, a, b, inception_weights, "--feature", "64", "--batch-size", "5")
    stored = _sample_batch(tmp_path / "b.npz", images[1])
    compressed = _sample_batch(tmp_path / "b_small.npz", images[1], compressed=True)
    for batch in (stored, compressed):
        result = _score(capsys, a, batch, inception_weights, "--feature", "64", "--batch-size", "5")
        assert (result["n_b"], result["found_b"]) == (N_B, N_B)
        assert relative(result["fid"], direct["fid"]) <= 1e-12
    code, out, err = _run(
        capsys, "stats", compressed, "-o", tmp_path / "ref_b.npz", "--feature", "64", weights=inception_weights
    )
    assert code == 0, err
    assert f"{N_B:,} images of 64 x 64 in {compressed} (arr_0)" in err
    both = _score(capsys, a, tmp_path / "ref_b.npz", inception_weights, "--feature", "64", "--batch-size", "5")
    assert relative(both["fid"], direct["fid"]) <= 1e-9


def test_an_adm_reference_batch_is_read_as_its_statistics(folders, inception_weights, tmp_path, capsys) -> None:
    """ADM's reference batches hold the images and mu/sigma: the statistics are used, as ADM's evaluator does
    (arr_0 here is deliberately not the images the statistics came from)."""
    a, b = folders
    _run(capsys, "stats", b, "-o", tmp_path / "ref.npz", "--feature", "64", "--no-progress", weights=inception_weights)
    with np.load(tmp_path / "ref.npz") as data:
        stats = {key: data[key] for key in ("mu", "sigma")}
    adm = _sample_batch(tmp_path / "adm.npz", smooth_images(4, 16, seed=9), **stats)
    expected = _score(capsys, a, tmp_path / "ref.npz", inception_weights, "--feature", "64")
    # Round-off apart: our file records n, so its factor comes from the range of sigma (n - 1 bounds the rank);
    # ADM's holds no n, so from eigh.
    assert relative(_score(capsys, a, adm, inception_weights, "--feature", "64")["fid"], expected["fid"]) <= 1e-12


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 8, 8, 3), np.float32), r"must be \(N, H, W, 3\) uint8 images .* got float32"),
        (np.zeros((4, 3, 8, 8), np.uint8), r"got uint8 \(4, 3, 8, 8\)"),
        (np.zeros((1, 8, 8, 3), np.uint8), "holds 1 image"),
    ],
)
def test_bad_sample_batches_are_one_line_errors(folders, array, message, tmp_path, capsys) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, arr_0=array)
    code, _, err = _run(capsys, "score", folders[0], path)
    assert code == 2
    _assert_one_line_error(err)
    assert re.search(message, err), err


def test_sample_batch_is_streamed_one_batch_at_a_time(tmp_path) -> None:
    """Reading 200 images of 32 x 32 (614 kB) ten at a time allocates about one batch (30 kB) at a time, stored
    or compressed; a truncated member is refused before any image is read."""
    imgs = smooth_images(200, 32, seed=3)
    for compressed in (False, True):
        path = _sample_batch(tmp_path / f"s{compressed}.npz", imgs, compressed)
        batch = SampleBatch(path)
        assert (batch.n, batch.height, batch.width) == (200, 32, 32)
        tracemalloc.start()
        try:
            read = [chunk for chunk in batch.batches(10)]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert torch.equal(torch.cat(read), imgs)
        assert peak < 180_000, peak  # a few copies of one 30 kB batch and zipfile's buffers, not the 614 kB
    with zipfile.ZipFile(tmp_path / "sFalse.npz") as stored, zipfile.ZipFile(tmp_path / "short.npz", "w") as short:
        short.writestr("arr_0.npy", stored.read("arr_0.npy")[:-3072])  # one image short
    with pytest.raises(ValueError, match="truncated or corrupt"):
        SampleBatch(tmp_path / "short.npz")


def test_stats_refuses_to_overwrite_its_input_batch(images, tmp_path, capsys) -> None:
    """`stats X.npz -o X.npz` replaced the sample batch by its statistics (also through a link), exit 0."""
    batch = _sample_batch(tmp_path / "samples.npz", images[1])
    before = batch.read_bytes()
    (tmp_path / "link.npz").symlink_to(batch)
    for output in (batch, tmp_path / "link.npz"):
        code, _, err = _run(capsys, "stats", batch, "-o", output)
        assert code == 2
        _assert_one_line_error(err, "is the input", "would destroy the input")
    assert batch.read_bytes() == before


def test_inception_score_of_b_needs_images_in_b(folders, tmp_path, capsys) -> None:
    """--metrics is printed A's score under "inception_score" when B was a statistics file."""
    stats = FeatureStats.from_features(torch.randn(10, 64, dtype=torch.float64), compat="tensorflow")
    stats.save(tmp_path / "b.npz")
    code, _, err = _run(capsys, "score", folders[0], tmp_path / "b.npz", "--metrics", "fid,is", "--feature", "64")
    assert code == 2
    _assert_one_line_error(err, "--metrics is scores the images of B", "pass it as B")


@pytest.mark.parametrize("singular_first", [True, False])
def test_a_broken_statistics_file_is_a_one_line_error_in_either_position(singular_first, tmp_path, capsys) -> None:
    """A from fewer images than dimensions (singular sigma), B with a negative eigenvalue: FID printed 0.0 with
    exit 0 in one order and a traceback in the other."""
    mu = np.zeros(4)
    np.savez(tmp_path / "singular.npz", mu=mu, sigma=np.diag([1.0, 0, 0, 0]))
    np.savez(tmp_path / "broken.npz", mu=mu, sigma=np.diag([1.0, 1, 1, -5]))
    a, b = ("singular.npz", "broken.npz") if singular_first else ("broken.npz", "singular.npz")
    code, out, err = _run(capsys, "score", tmp_path / a, tmp_path / b, "--compat", "tensorflow")
    assert code == 2 and out == ""
    _assert_one_line_error(err, f"the sigma of {tmp_path / 'broken.npz'} is not a covariance", "eigenvalue -5")


def test_identical_images_on_either_side_give_one_fid(folders, images, inception_weights, tmp_path, capsys) -> None:
    """A folder of identical images (a zero covariance) on side A crashed ("min(): Expected reduction dim"); on
    side B it gave the FID. Both orders now give the same number."""
    blank = _write(tmp_path / "blank", [images[0][0]] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the constant features read as cancellation; harmless here
        forward = _score(capsys, blank, folders[1], inception_weights, "--feature", "64")["fid"]
        backward = _score(capsys, folders[1], blank, inception_weights, "--feature", "64")["fid"]
    assert forward > 0 and relative(forward, backward) < 1e-9


def test_an_adm_batch_read_for_its_images_says_so(folders, images, inception_weights, tmp_path, capsys) -> None:
    mu, sigma = np.zeros(64), np.eye(64)
    adm = _sample_batch(tmp_path / "adm.npz", images[1], mu=mu, sigma=sigma)
    result = _run(
        capsys, "score", folders[0], adm, "--metrics", "fid,prc", "--feature", "64", "--no-progress",
        weights=inception_weights,
    )  # fmt: skip
    code, _, err = result
    assert code == 0, err
    assert "holds images and statistics (an ADM reference batch)" in err and "FID included, comes from them" in err


@pytest.mark.parametrize(
    ("launcher", "fragment"),
    [
        ({"WORLD_SIZE": "2", "RANK": "-1"}, "RANK='-1' is not an integer from 0 to 1"),
        ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK='5' is not an integer from 0 to 1"),
        ({"WORLD_SIZE": "-1", "RANK": "0"}, "WORLD_SIZE='-1' is not an integer >= 1"),
        ({"WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE='two'"),
        ({"WORLD_SIZE": "1", "RANK": "3"}, "RANK='3' is not an integer from 0 to 0"),
        ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "99999"}, "MASTER_PORT='99999'"),
    ],
)
def test_inconsistent_launcher_variables_exit_2_at_once(launcher, fragment, monkeypatch, capsys) -> None:
    """RANK=-1 hung for torch's 30 minutes, RANK=5 and WORLD_SIZE=-1 ended in a gloo traceback."""
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999", **launcher}.items():
        monkeypatch.setenv(name, value)
    code, _, err = _run(capsys, "score", "a", "b")
    assert code == 2
    _assert_one_line_error(err, fragment)


@pytest.mark.slow
def test_a_process_without_peers_stops_after_the_join_timeout() -> None:
    """WORLD_SIZE=2 RANK=0 with no second process waited for torch's default 30 minutes; now --join-timeout (60 s by
    default, 2 s here) bounds it: exit 2, one line, the time well under the join timeout plus the start."""
    launcher = launcher_variables(2)
    start = time.monotonic()
    done = PythonProcess("-m", "fid_metric", "score", "a", "b", "--join-timeout", "2", RANK="0", **launcher).wait(60)
    assert time.monotonic() - start < 30
    assert done.returncode == 2, done.stderr
    _assert_one_line_error(done.stderr, "could not join the others", "within 2 s")


def test_an_edm2_reference_pickle_is_a_statistics_side(tmp_path, capsys) -> None:
    """EDM2's img512.pkl-style file: its FID entry (TensorFlow's definition) against our statistics file."""
    g = np.random.default_rng(1)
    x, y = g.standard_normal((40, 8)), g.standard_normal((30, 8)) + 0.3
    with (tmp_path / "ref.pkl").open("wb") as file:
        pickle.dump({"num_images": 40, "fid": {"mu": x.mean(0), "sigma": np.cov(x, rowvar=False)}}, file)
    ours = FeatureStats.from_features(torch.from_numpy(y), compat="tensorflow")
    ours.save(tmp_path / "gen.npz")
    code, out, err = _run(capsys, "score", tmp_path / "ref.pkl", tmp_path / "gen.npz", "--json")
    assert code == 0, err
    result = json.loads(out)
    expected = float(
        frechet_distance(
            torch.from_numpy(x.mean(0)), torch.from_numpy(np.cov(x, rowvar=False)), ours.mean, ours.covariance
        )
    )
    assert result["compat"] == "tensorflow" and result["n_a"] == 40
    assert relative(result["fid"], expected) <= 1e-12
