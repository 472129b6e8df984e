"""Statistics with groups: ``statistics(real=False)`` of an ``InceptionMetrics(fid_groups=G)``, saved by
``fid-metric stats --groups G``, and ``fid_metric.compare`` / ``fid-metric compare`` on them.

The reference for every number is the same computation on the metrics themselves (``compare(a, b)`` of two
``InceptionMetrics``, ``fid_stderr``), which tests/test_jackknife.py holds to a group-deleted recomputation and
to its coverage in simulation: files must change nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_python, smooth_images
from PIL import Image
from torch import nn

from fid_metric import FeatureStats, InceptionMetrics, StatsMismatchError, compare
from fid_metric._cli.main import main
from fid_metric._files.stats_formats import MAX_GROUPS

D, GROUPS = 6, 4


class _Identity(nn.Module):
    """The "network" returns its input: features given directly, float64."""

    num_features = D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _metric(real: torch.Tensor, fake: torch.Tensor, groups: int = GROUPS) -> InceptionMetrics:
    metric = InceptionMetrics(sfid=False, inception_score=False, feature=_Identity(), fid_groups=groups)
    metric.update(real, real=True)
    for batch in fake.split(7):  # several updates: positions carry on across them
        metric.update(batch, real=False)
    return metric


@pytest.fixture(scope="module")
def features() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real features, and two models' generated features from the same latents (correlated, as compare pairs)."""
    g = torch.Generator().manual_seed(7)
    latents = torch.randn(40, D, generator=g, dtype=torch.float64)
    real = torch.randn(60, D, generator=g, dtype=torch.float64)
    a = latents * 1.1 + 0.2
    b = latents + 0.3 + 0.1 * torch.randn(40, D, generator=g, dtype=torch.float64)
    return real, a, b


def test_statistics_keep_the_groups_and_files_keep_them_exactly(features, tmp_path) -> None:
    """The generated side's statistics hold the group states; a file holds each group's outer-product sum as its
    upper triangle, d (d + 1) / 2 float64 numbers, and gives them back bit for bit."""
    real, a, _ = features
    metric = _metric(real, a)
    stats = metric.statistics(real=False)
    assert stats.groups is not None and metric.statistics(real=True).groups is None
    counts, sums, outers = stats.groups
    assert counts.tolist() == [10, 10, 10, 10]
    for g in range(GROUPS):  # group g holds the rows j with j % G == g
        rows = a[g::GROUPS]
        assert torch.allclose(sums[g], rows.sum(0), rtol=1e-14) and torch.allclose(outers[g], rows.T @ rows)
    stats.save(tmp_path / "groups.npz")
    with np.load(tmp_path / "groups.npz") as data:
        assert data["group_outer_sum_triu"].shape == (GROUPS, D * (D + 1) // 2)
    loaded = FeatureStats.load(tmp_path / "groups.npz")
    assert loaded.groups is not None
    for mine, theirs in zip(stats.groups, loaded.groups):
        assert torch.equal(mine, theirs)


def test_the_file_grows_by_the_triangles_alone(features, tmp_path) -> None:
    """Groups add G (d (d + 1) / 2 + d + 1) * 8 bytes and a few headers: at d = 2048 16.8 MB a group."""
    real, a, _ = features
    stats = _metric(real, a).statistics(real=False)
    stats.save(tmp_path / "with.npz")
    FeatureStats.from_sums(*stats.sums()).save(tmp_path / "without.npz")
    grown = (tmp_path / "with.npz").stat().st_size - (tmp_path / "without.npz").stat().st_size
    numbers = GROUPS * (D * (D + 1) // 2 + D + 1) * 8
    assert numbers <= grown < numbers + 3 * 300  # three arrays' zip and .npy headers


@pytest.mark.parametrize("paired", [None, False])
def test_compare_on_statistics_is_compare_on_the_metrics(features, tmp_path, paired) -> None:
    """Saved and loaded statistics with groups and the reference's statistics give the metrics' comparison."""
    real, a, b = features
    metrics = _metric(real, a), _metric(real, b)
    want = compare(*metrics, paired=paired)
    assert want.stderr > 0 and want.paired is (paired is None), "the test would prove nothing"
    for name, stats in (("a", metrics[0].statistics(real=False)), ("b", metrics[1].statistics(real=False))):
        stats.save(tmp_path / f"{name}.npz")
    metrics[0].statistics(real=True).save(tmp_path / "ref.npz")
    a_stats, b_stats, ref = (FeatureStats.load(tmp_path / f"{name}.npz") for name in ("a", "b", "ref"))
    got = compare(a_stats, b_stats, reference=ref, paired=paired)
    assert got.paired == want.paired and got.df == pytest.approx(want.df, rel=1e-12)
    for field in ("difference", "stderr", "p_value"):
        assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-10), field


def test_compare_on_statistics_refuses_what_does_not_belong(features) -> None:
    real, a, b = features
    first, second = _metric(real, a).statistics(real=False), _metric(real, b).statistics(real=False)
    ref = FeatureStats.from_features(real)
    with pytest.raises(TypeError, match="two FeatureStats with reference"):
        compare(first, second)  # no reference
    with pytest.raises(ValueError, match="in groups"):
        compare(first, FeatureStats.from_sums(*second.sums()), reference=ref)
    with pytest.raises(StatsMismatchError, match="one number of groups"):
        compare(first, _metric(real, b, groups=5).statistics(real=False), reference=ref)
    other = FeatureStats.from_features(real, extractor="another/6")
    with pytest.raises(StatsMismatchError, match="extractor"):
        compare(first, second, reference=other)
    small = _metric(real, a[:9], groups=GROUPS).statistics(real=False)  # groups of 3, 2, 2, 2 ...
    tiny = _metric(real, a[:7], groups=GROUPS).statistics(real=False)  # ... and 2, 2, 2, 1
    with pytest.raises(ValueError, match="at least 2 generated images per group"):
        compare(small, tiny, reference=ref)


def test_merged_statistics_add_their_groups(features) -> None:
    """Two jobs' statistics in as many groups add group by group; in other numbers of groups the union has none."""
    real, a, b = features
    first, second = _metric(real, a).statistics(real=False), _metric(real, b).statistics(real=False)
    union = first + second
    assert union.groups is not None
    assert torch.equal(union.groups[0], first.groups[0] + second.groups[0])
    assert torch.allclose(union.groups[2], first.groups[2] + second.groups[2], rtol=0, atol=0)
    assert (first + _metric(real, b, groups=5).statistics(real=False)).groups is None


def test_a_reference_with_groups_serves_as_real_stats(features) -> None:
    """real_stats ignores the groups (they belong to comparisons of generated samples): the FID is the one of the
    same statistics without them."""
    real, a, b = features
    with_groups = _metric(real, a).statistics(real=False)
    values = []
    for stats in (with_groups, FeatureStats.from_sums(*with_groups.sums())):
        metric = InceptionMetrics(sfid=False, inception_score=False, feature=_Identity(), real_stats=stats)
        metric.update(b, real=False)
        values.append(metric.compute()["fid"])
    assert values[0] == values[1]


def _damaged(tmp_path: Path, stats: FeatureStats, **changes: np.ndarray) -> Path:
    stats.save(tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz") as data:
        arrays = {**dict(data), **changes}
    path = tmp_path / "damaged.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_files_with_inconsistent_groups_are_refused(features, tmp_path) -> None:
    real, a, _ = features
    stats = _metric(real, a).statistics(real=False)
    assert stats.groups is not None
    rows, cols = torch.triu_indices(D, D)
    triangles = stats.groups[2][:, rows, cols].numpy().copy()
    triangles[1, 3] += 1.0
    with pytest.raises(ValueError, match="group outer-product sums do not add up"):
        FeatureStats.load(_damaged(tmp_path, stats, group_outer_sum_triu=triangles))
    sums = stats.groups[1].numpy().copy()
    sums[0, 0] += 1e-3
    with pytest.raises(ValueError, match="group feature sums do not add up"):
        FeatureStats.load(_damaged(tmp_path, stats, group_feature_sum=sums))
    with pytest.raises(ValueError, match="add up to n"):
        FeatureStats.load(_damaged(tmp_path, stats, group_n=np.array([10, 10, 10, 11])))
    with pytest.raises(ValueError, match="integer group_n"):
        FeatureStats.load(_damaged(tmp_path, stats, group_n=np.array([10.0, 10.0, 10.0, 10.0])))
    with pytest.raises(ValueError, match="must come with the sums"):
        FeatureStats.load(_damaged(tmp_path, stats, n=None, feature_sum=None, outer_sum=None))
    with pytest.raises(ValueError, match="group_outer_sum_triu"):
        FeatureStats.load(_damaged(tmp_path, stats, group_outer_sum_triu=triangles[:, :-1]))
    many = MAX_GROUPS + 1  # refused from its headers, before anything is unpacked
    too_many = {"group_n": np.zeros(many, dtype=np.int64), "group_feature_sum": np.zeros((many, D))}
    with pytest.raises(ValueError, match=f"G <= {MAX_GROUPS}"):
        FeatureStats.load(_damaged(tmp_path, stats, **too_many, group_outer_sum_triu=np.zeros((many, D * 7 // 2))))


# The command line, on the FID Inception network (random weights, 64 features, a few 48 x 48 images).

N = 9


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path, Path]:
    """REF, A and B as folders of PNGs; A and B hold N images each."""
    root = tmp_path_factory.mktemp("group_stats")
    sides = {"ref": smooth_images(8, 48, seed=400), "a": smooth_images(N, 48, seed=401)}
    sides["b"] = sides["a"] // 2 + 50  # B's image j is a transform of A's: paired
    for name, images in sides.items():
        (root / name).mkdir()
        for i, img in enumerate(images):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / name / f"{i:03d}.png")
    return root / "ref", root / "a", root / "b"


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _options(weights: Path) -> list[str]:
    return ["--feature", "64", "--weights", str(weights), "--device", "cpu", "--workers", "0", "--no-progress"]


@pytest.mark.filterwarnings("ignore:FID from")
def test_command_line_statistics_with_groups_compare_as_the_images_do(folders, inception_weights, tmp_path, capsys):
    """stats --groups 3 writes A's and B's groups; compare REF A.npz B.npz prints what compare REF A B does; score
    on a group file prints FID +- the standard error InceptionMetrics(fid_groups=3) gives on the images."""
    ref, a, b = folders
    options = _options(inception_weights)
    for name, folder in (("a", a), ("b", b)):
        code, out, err = _cli(
            capsys, "stats", str(folder), "-o", str(tmp_path / f"{name}.npz"), "--groups", "3", *options
        )
        assert code == 0 and f"{N} images in 3 groups" in out, err
    code, out, err = _cli(capsys, "stats", str(ref), "-o", str(tmp_path / "ref.npz"), *options)
    assert code == 0, err
    code, out, err = _cli(capsys, "compare", str(ref), str(a), str(b), "--groups", "3", "--json", *options)
    assert code == 0, err
    from_images = json.loads(out)
    assert from_images["paired"] and from_images["stderr"] > 0, "the test would prove nothing"
    files = [str(tmp_path / f"{name}.npz") for name in ("ref", "a", "b")]
    code, out, err = _cli(capsys, "compare", *files, "--json")  # G from the files; no weights are needed
    assert code == 0 and "in 3 groups" in err, err
    from_files = json.loads(out)
    for key in ("fid_a", "fid_b", "difference", "stderr", "p_value"):
        assert from_files[key] == pytest.approx(from_images[key], rel=1e-9), key
    assert (from_files["n_ref"], from_files["n_a"], from_files["n_b"]) == (8, N, N)
    code, out, err = _cli(capsys, "compare", files[0], str(a), files[2], "--json", *options)  # images and a file
    assert code == 0 and json.loads(out)["stderr"] == pytest.approx(from_images["stderr"], rel=1e-9), err

    metric = InceptionMetrics(
        feature=64, sfid=False, inception_score=False, fid_groups=3, feature_extractor_weights_path=inception_weights
    )
    for real, folder in ((True, ref), (False, a)):
        for path in sorted(folder.iterdir()):
            metric.update(torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)[None], real=real)
    want = metric.compute()
    code, out, err = _cli(capsys, "score", files[1], files[0])
    assert code == 0, err
    fid, stderr = out.strip().split(" +- ")
    assert float(fid) == pytest.approx(float(want["fid"]), rel=1e-9)
    assert float(stderr) == pytest.approx(float(want["fid_stderr"]), rel=1e-2)  # printed to 3 digits


def test_command_line_compare_refuses_files_without_groups_or_in_other_groups(folders, inception_weights, tmp_path):
    ref, a, b = folders
    options = _options(inception_weights)
    assert main(["stats", str(a), "-o", str(tmp_path / "plain.npz"), *options]) == 0
    assert main(["stats", str(b), "-o", str(tmp_path / "g3.npz"), "--groups", "3", *options]) == 0
    plain, g3 = str(tmp_path / "plain.npz"), str(tmp_path / "g3.npz")
    assert main(["compare", str(ref), plain, g3, *options]) == 2
    assert main(["compare", str(ref), str(a), g3, "--groups", "4", *options]) == 2


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:FID from")
def test_two_processes_write_the_groups_of_one(folders, inception_weights, tmp_path) -> None:
    """stats --groups 3 on two torchrun processes (every other image each) writes one process's groups: image j
    in group j % 3 whichever process read it; the sums to round-off of the order they were added in."""
    _, a, _ = folders
    options = _options(inception_weights)
    assert main(["stats", str(a), "-o", str(tmp_path / "one.npz"), "--groups", "3", *options]) == 0
    run_python("-m fid_metric", "stats", str(a), "-o", str(tmp_path / "two.npz"), "--groups", "3", *options, ranks=2)
    one, two = FeatureStats.load(tmp_path / "one.npz"), FeatureStats.load(tmp_path / "two.npz")
    assert one.groups is not None and two.groups is not None
    assert torch.equal(one.groups[0], two.groups[0])
    for mine, theirs in zip(one.groups[1:], two.groups[1:]):
        assert torch.allclose(mine, theirs, rtol=1e-12, atol=1e-12 * float(mine.abs().max()))
