"""``fid-metric score --metrics ...`` (the papers' table) and the command on two processes started as torchrun
starts them.

The numbers must be ``InceptionMetrics``' on the same images (the command only reads, shares out and prints);
on 2 processes, each given every other image, the 1-process run's: FID to 1e-9, counts exactly, precision and
recall exactly. Image sets have odd sizes, so the processes' shares differ (3 and 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PythonProcess, launcher_variables, run_python, smooth_images
from PIL import Image

from fid_metric import FeatureStats, InceptionMetrics, compare
from fid_metric._cli.main import main

pytestmark = pytest.mark.filterwarnings("ignore:FID from")

N_A, N_B = 5, 5
KID = ("--kid-subsets", "3")  # and the default subset size: 1000, or as here the smaller side's 5 images
ALL = ("--metrics", "kid,prc,is,sfid,fid", *KID)  # any order; the table has the papers' order


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    return smooth_images(N_A, 48, seed=300), smooth_images(N_B, 48, seed=301) // 2 + 40


@pytest.fixture(scope="module")
def inputs(images, tmp_path_factory) -> tuple[Path, Path]:
    """A as a folder of PNGs, B as an ADM-style sample batch (arr_0)."""
    root = tmp_path_factory.mktemp("cli_metrics")
    (root / "a").mkdir()
    for i, img in enumerate(images[0]):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / "a" / f"{i:03d}.png")
    np.savez(root / "b.npz", arr_0=images[1].permute(0, 2, 3, 1).numpy())
    return root / "a", root / "b.npz"


def _argv(a: Path, b: Path, weights: Path, *options: str) -> list[str]:
    common = ["--feature", "64", "--weights", str(weights), "--device", "cpu", "--workers", "0", "--no-progress"]
    return ["score", str(a), str(b), *common, "--batch-size", "4", *options]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def one_process(images, inception_weights) -> dict[str, float]:
    """InceptionMetrics' whole table of ``images`` in this process, fed as the command feeds them (batches of 4),
    on one thread, as each process of the two-process run computes (the same arithmetic, so 1e-9 apart)."""
    metric = InceptionMetrics(
        feature=64,
        feature_extractor_weights_path=inception_weights,
        precision_recall=True,
        kid=True,
        kid_subsets=3,
        kid_subset_size=5,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for real, imgs in ((True, images[0]), (False, images[1])):
            for batch in imgs.split(4):
                metric.update(batch, real=real)
        return {k: float(v) for k, v in metric.compute().items()}
    finally:
        torch.set_num_threads(threads)


def test_the_table_is_inception_metrics_on_the_same_images(inputs, inception_weights, one_process, capsys) -> None:
    """The table, in the papers' order with the std after "+-", holds InceptionMetrics' numbers on the same images
    (printed to 6 significant digits; this run on two threads, the reference on one: round-off apart)."""
    code, out, err = _run(capsys, *_argv(*inputs, inception_weights, *ALL))
    assert code == 0, err
    assert "KID subsets of 5 images (the smaller side), not 1000" in err
    want = one_process
    lines = out.strip().splitlines()
    assert [line[:16].strip() for line in lines] == ["FID", "sFID", "Inception Score", "Precision", "Recall", "KID"]
    printed = {line[:16].strip(): line[16:] for line in lines}
    assert float(printed["FID"]) == pytest.approx(want["fid"], rel=1e-5)
    assert float(printed["sFID"]) == pytest.approx(want["sfid"], rel=1e-5)
    assert float(printed["Precision"]) == pytest.approx(want["precision"], rel=1e-5)
    assert float(printed["KID"].split(" +- ")[0]) == pytest.approx(want["kid"], rel=1e-5)
    # One split (5 images, ADM's splits of 5000): its std is 0, so no "+-"
    assert want["inception_score_std"] == 0 and "+-" not in printed["Inception Score"]


@pytest.mark.slow
def test_two_processes_equal_one(inputs, inception_weights, one_process) -> None:
    """torchrun's variables, two gloo processes: rank 0 prints --json with the 1-process numbers (every value,
    the counts exactly, precision and recall exactly), rank 1 prints nothing."""
    out = run_python("-m fid_metric", *_argv(*inputs, inception_weights, *ALL, "--json"), ranks=2).stdout
    two = json.loads(out)
    assert two["processes"] == 2
    assert (two["n_a"], two["n_b"], two["found_a"], two["found_b"]) == (N_A, N_B, N_A, N_B)
    assert set(one_process) < set(two)
    for key in ("fid", "sfid", "kid", "kid_std"):
        assert two[key] == pytest.approx(one_process[key], rel=1e-9, abs=0), key
    # The logits come from a float32 matmul whose blocking, and so its round-off, follows the batch's shape, and
    # the processes' batches are not this process's: the score moved 1.5e-9 (measured).
    for key in ("inception_score", "inception_score_std"):
        assert two[key] == pytest.approx(one_process[key], rel=1e-7, abs=0), key
    assert (two["precision"], two["recall"]) == (one_process["precision"], one_process["recall"])


def test_an_adm_reference_batch_gives_its_images_for_prc_and_kid(images, inputs, inception_weights, tmp_path, capsys):
    """ADM's reference batch holds arr_0 and mu/sigma: for precision/recall and KID its images are used (as
    ADM's evaluator computes its P/R from them); a statistics-only file cannot give them."""
    a, b = inputs
    reference = tmp_path / "ref.npz"
    code, _, err = _run(capsys, "stats", str(a), "-o", str(reference), *_argv(a, b, inception_weights)[3:])
    assert code == 0, err
    with np.load(reference) as data:
        np.savez(tmp_path / "adm.npz", arr_0=images[0].permute(0, 2, 3, 1).numpy(), **dict(data))
    options = ("--metrics", "prc", "--json")
    code, out, err = _run(capsys, *_argv(tmp_path / "adm.npz", b, inception_weights, *options))
    assert code == 0, err
    from_adm = json.loads(out)
    code, out, err = _run(capsys, *_argv(a, b, inception_weights, *options))
    from_folder = json.loads(out)
    assert (from_adm["precision"], from_adm["recall"]) == (from_folder["precision"], from_folder["recall"])
    code, out, err = _run(capsys, *_argv(reference, b, inception_weights, *options))
    assert code == 2 and "need images on both sides" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--metrics", "fid,pr"), "expected names from fid, sfid, is, prc, kid"),
        (("--metrics", ","), "expected names from"),
        (("--metrics", "kid", "--kid-subset-size", "1"), "expected an integer >= 2"),
        (("--metrics", "kid", "--kid-subset-size", "6"), "--kid-subset-size 6 is larger than a side (5 images)"),
    ],
)
def test_bad_metric_options_are_one_line_errors(inputs, inception_weights, capsys, options, message) -> None:
    code, out, err = _run(capsys, *_argv(*inputs, inception_weights, *options))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("fid-metric: error: ") and message in err, err


@pytest.mark.slow
def test_a_process_that_fails_stops_both(images, inputs, inception_weights, tmp_path) -> None:
    """An image whose header reads but whose pixel data is cut short, at position 1 (process 1's first): both
    processes exit 2 instead of process 0 waiting in the sync; process 1 names the file."""
    folder = tmp_path / "b"
    folder.mkdir()
    for i, img in enumerate(images[1]):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    whole = (folder / "001.png").read_bytes()
    (folder / "001.png").write_bytes(whole[: len(whole) // 2])
    launcher = launcher_variables(2)
    ranks = [
        PythonProcess("-m", "fid_metric", *_argv(inputs[0], folder, inception_weights), RANK=str(r), **launcher)
        for r in range(2)
    ]
    done = [rank.wait(240) for rank in ranks]
    assert [d.returncode for d in done] == [2, 2], [d.stderr for d in done]
    assert "another process stopped" in done[0].stderr
    assert "001.png" in done[1].stderr and "Traceback" not in done[1].stderr


def test_inception_score_splits_of_the_command_are_adms(inputs, images, inception_weights, capsys) -> None:
    """--is-split-size 2 on B's 5 images: ADM's consecutive splits of 2, 2 and 1, a real +- in the table, the values
    InceptionMetrics(splits=3, split_size=2) gives."""
    code, out, err = _run(
        capsys, *_argv(*inputs, inception_weights, "--metrics", "is", "--is-split-size", "2", "--json")
    )
    assert code == 0, err
    metric = InceptionMetrics(sfid=False, splits=3, split_size=2, feature_extractor_weights_path=inception_weights)
    for real, imgs in ((True, images[0]), (False, images[1])):
        for batch in imgs.split(4):
            metric.update(batch, real=real)
    values = metric.compute()
    printed = json.loads(out)
    assert printed["inception_score"] == pytest.approx(float(values["inception_score"]), rel=1e-7)
    assert printed["inception_score_std"] == pytest.approx(float(values["inception_score_std"]), rel=1e-6)
    assert printed["inception_score_std"] > 1e-4


def test_groups_print_each_number_with_its_jackknife_standard_error(images, inputs, inception_weights, capsys) -> None:
    """--groups 2: "FID +- stderr" alone, and in the table after FID and sFID; the numbers are
    InceptionMetrics(fid_groups=2)'s on the same images (to the printed digits)."""
    metric = InceptionMetrics(
        feature=64, inception_score=False, fid_groups=2, feature_extractor_weights_path=inception_weights
    )
    for real, imgs in ((True, images[0]), (False, images[1])):
        for batch in imgs.split(4):
            metric.update(batch, real=real)
    want = {k: float(v) for k, v in metric.compute().items()}
    assert want["fid_stderr"] > 0, "the test would prove nothing"
    code, out, err = _run(capsys, *_argv(*inputs, inception_weights, "--groups", "2"))
    assert code == 0, err
    fid, stderr = out.strip().split(" +- ")
    assert float(fid) == pytest.approx(want["fid"], rel=1e-5)
    assert float(stderr) == pytest.approx(want["fid_stderr"], rel=1e-2)  # printed to 3 digits
    code, out, err = _run(capsys, *_argv(*inputs, inception_weights, "--groups", "2", "--metrics", "fid,sfid"))
    assert code == 0, err
    printed = {line[:16].strip(): line[16:].split(" +- ") for line in out.strip().splitlines()}
    assert float(printed["FID"][1]) == pytest.approx(want["fid_stderr"], rel=5e-2)  # 2 digits
    assert float(printed["sFID"][0]) == pytest.approx(want["sfid"], rel=1e-5)
    assert float(printed["sFID"][1]) == pytest.approx(want["sfid_stderr"], rel=5e-2)
    code, _, err = _run(capsys, *_argv(*inputs, inception_weights, "--groups", "1"))
    assert code == 2 and "--groups" in err


def test_compare_prints_what_fid_metric_compare_gives(images, inputs, inception_weights, capsys) -> None:
    """compare REF A B --groups 2 --json: fid_metric.compare of two InceptionMetrics(fid_groups=2) fed REF as the
    real side and A, B as the generated ones, in the same batches."""
    metrics = []
    for generated in (images[1], images[0]):
        metric = InceptionMetrics(
            feature=64,
            sfid=False,
            inception_score=False,
            fid_groups=2,
            feature_extractor_weights_path=inception_weights,
        )
        for real, imgs in ((True, images[0]), (False, generated)):
            for batch in imgs.split(4):
                metric.update(batch, real=real)
        metrics.append(metric)
    want = compare(*metrics)
    assert want.paired and want.stderr > 0, "the test would prove nothing"
    a, b = inputs[1], inputs[0]  # A: the sample batch, B: the folder (also REF)
    common = ["--feature", "64", "--weights", str(inception_weights), "--device", "cpu", "--workers", "0"]
    argv = ["compare", str(inputs[0]), str(a), str(b), *common, "--no-progress", "--batch-size", "4", "--groups", "2"]
    code, out, err = _run(capsys, *argv, "--json")
    assert code == 0, err
    printed = json.loads(out)
    assert printed["difference"] == pytest.approx(want.difference, rel=1e-9)
    assert printed["stderr"] == pytest.approx(want.stderr, rel=1e-9)
    assert printed["p_value"] == pytest.approx(want.p_value, rel=1e-6) and printed["paired"] is True
    assert (printed["n_ref"], printed["n_a"], printed["n_b"]) == (N_A, N_B, N_A)
    code, out, err = _run(capsys, *argv)
    assert code == 0 and out.startswith("FID(A) - FID(B) = ") and "paired" in out, err


class _StubCLIP(torch.nn.Module):
    """Stands in for ``CLIPFeatures`` where the command's wiring is tested (the networks themselves, and their
    preprocessing against clean-fid's and CMMD's: tests/test_clip.py, tests/test_cmmd.py): 8 features, a fixed
    random projection of 4 x 4 average-pooled pixels."""

    num_features = 8

    def __init__(self, model: str, weights_path: Path | None = None) -> None:
        super().__init__()
        self.extractor_id = f"stub-{model}/8"
        g = torch.Generator().manual_seed(len(model))
        self.register_buffer("projection", torch.randn(3 * 4 * 4, 8, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1) @ self.projection


@pytest.fixture
def stub_clip(monkeypatch) -> None:
    monkeypatch.setattr("fid_metric._cli.feeding.CLIPFeatures", _StubCLIP)


def _fed(metric, images, batch: int = 4):
    for real, imgs in ((True, images[0]), (False, images[1])):
        for part in imgs.split(batch):
            metric.update(part, real=real)
    return metric.compute()


def test_cmmd_is_the_metric_on_the_same_images(images, inputs, inception_weights, stub_clip, capsys) -> None:
    """--metrics fid,cmmd: FID from the Inception network and CMMD from the CLIP network, each the library's number
    on the same images (one decoding feeds both); --metrics cmmd alone needs no Inception network."""
    from fid_metric import CMMD, FrechetInceptionDistance

    want_cmmd = float(_fed(CMMD(_StubCLIP("vit-l-14-336")), images))
    want_fid = float(_fed(FrechetInceptionDistance(64, feature_extractor_weights_path=inception_weights), images))
    assert want_cmmd > 0, "the test would prove nothing"
    code, out, err = _run(capsys, *_argv(*inputs, inception_weights, "--metrics", "fid,cmmd", "--json"))
    assert code == 0, err
    printed = json.loads(out)
    assert printed["cmmd"] == pytest.approx(want_cmmd, rel=1e-9)
    assert printed["fid"] == pytest.approx(want_fid, rel=1e-9)
    common = ["--device", "cpu", "--workers", "0", "--no-progress", "--batch-size", "4"]
    code, out, err = _run(capsys, "score", *map(str, inputs), "--metrics", "cmmd", *common)
    assert code == 0 and out.startswith("CMMD") and "stub-vit-l-14-336/8" in err, err
    assert float(out.split()[1]) == pytest.approx(want_cmmd, rel=1e-5)


def test_density_coverage_are_inception_metrics_on_the_same_images(images, inputs, inception_weights, capsys) -> None:
    """--metrics dc --dc-neighborhood 2: InceptionMetrics(density_coverage=True)'s density and coverage, exactly
    (counts of neighbourhoods), in the table after KID's place and in --json."""
    metric = InceptionMetrics(
        feature=64,
        sfid=False,
        inception_score=False,
        density_coverage=True,
        dc_neighborhood=2,
        feature_extractor_weights_path=inception_weights,
    )
    want = {k: float(v) for k, v in _fed(metric, images).items()}
    code, out, err = _run(capsys, *_argv(*inputs, inception_weights, "--metrics", "dc", "--dc-neighborhood", "2"))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [line[:16].strip() for line in lines] == ["Density", "Coverage"]
    code, out, err = _run(
        capsys, *_argv(*inputs, inception_weights, "--metrics", "dc", "--dc-neighborhood", "2", "--json")
    )
    printed = json.loads(out)
    assert (printed["density"], printed["coverage"]) == (want["density"], want["coverage"])


def test_fd_on_clip_features_is_the_metric_on_the_same_images(images, inputs, stub_clip, tmp_path, capsys) -> None:
    """--feature clip: FrechetInceptionDistance(feature=CLIPFeatures()) on the same images, its statistics file
    recording the CLIP extractor (and no compat mode, which is the Inception network's), usable as A; --compat
    with it is an error."""
    from fid_metric import FrechetInceptionDistance

    want = float(_fed(FrechetInceptionDistance(_StubCLIP("vit-b-32")), images))
    common = ["--feature", "clip", "--device", "cpu", "--workers", "0", "--no-progress", "--batch-size", "4"]
    code, out, err = _run(capsys, "score", *map(str, inputs), *common, "--json")
    assert code == 0, err
    printed = json.loads(out)
    assert printed["fid"] == pytest.approx(want, rel=1e-9) and printed["extractor"] == "stub-vit-b-32/8"
    code, out, err = _run(capsys, "stats", str(inputs[0]), "-o", str(tmp_path / "clip.npz"), *common)
    assert code == 0, err
    assert FeatureStats.load(tmp_path / "clip.npz").extractor == "stub-vit-b-32/8"
    code, out, err = _run(capsys, "score", str(tmp_path / "clip.npz"), str(inputs[1]), *common)
    assert code == 0 and float(out) == pytest.approx(want, rel=1e-9), err
    assert "definition: stub-vit-b-32/8" in err
    code, out, err = _run(capsys, "score", *map(str, inputs), *common, "--compat", "tensorflow")
    assert code == 2 and "--feature clip has its own" in err
