"""The ``fid-metric`` command's arguments: the argparse parser, its help texts and the argparse types.

Only the standard library is imported here, so that ``fid-metric --help`` answers before torch is imported
(the commands import it when they run). The constants that the help quotes and that live beside torch code
elsewhere have torch-free copies here, each named after its source; tests/test_entry_points.py holds them
equal. ``--device``'s type imports torch when it converts a value, which happens only once parsing succeeded.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn

if TYPE_CHECKING:
    import torch

PROG = "fid-metric"
# The score table, in the order the papers print it: --metrics name, label, key of the value (its std: key + "_std")
TABLE_ROWS = [
    ("fid", "FID", "fid"),
    ("sfid", "sFID", "sfid"),
    ("is", "Inception Score", "inception_score"),
    ("prc", "Precision", "precision"),
    ("prc", "Recall", "recall"),
    ("kid", "KID", "kid"),
    ("dc", "Density", "density"),
    ("dc", "Coverage", "coverage"),
    ("cmmd", "CMMD", "cmmd"),
]
METRICS = tuple(dict.fromkeys(name for name, _, _ in TABLE_ROWS))  # --metrics names: fid, sfid, is, prc, kid, dc, cmmd
# 65,536 images of 3 x 299 x 299 float32 are 70 GB of network input: a larger batch is a typo.
MAX_BATCH_SIZE = 65536
JOIN_TIMEOUT = 60.0  # seconds every process waits for the others to join (--join-timeout)

# Torch-free copies, for the help and the choices.
POOL_FEATURES = (64, 192, 768, 2048)  # fid_metric._features.inception.POOL_FEATURES
CLIP_FEATURE = "clip"  # --feature clip: CLIPFeatures("vit-b-32"), clean-fid's model_name="clip_vit_b_32"
COMPAT_MODES = ("tensorflow", "pytorch-fid", "torchmetrics", "clean-fid")  # fid_metric._features.preprocess
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")  # fid_metric._files.image_folder.IMAGE_EXTENSIONS
FORMATS = ("BMP", "JPEG", "PNG", "WEBP")  # fid_metric._files.image_folder.FORMATS
WEIGHTS_ENV_PATH = "FID_METRIC_WEIGHTS"  # fid_metric._features.weights.INCEPTION.env_path

EPILOG = f"""\
examples:
  {PROG} score real/ generated/
  {PROG} stats real/ -o real.npz && {PROG} score real.npz generated/ --json
  {PROG} score ref.npz samples.npz --metrics fid,sfid,is,prc,kid
  torchrun --nproc_per_node=8 -m fid_metric score real/ generated/ --metrics fid,prc

processes:
  Started by torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set), each process scores every
  WORLD_SIZE-th image of each side on cuda:LOCAL_RANK (or the CPU), the statistics are combined
  once, and rank 0 prints; the numbers are those of one process. The launcher's variables are
  checked first (0 <= RANK < WORLD_SIZE), and a process whose peers have not all started within
  --join-timeout seconds stops with exit code 2.

inputs:
  A folder is searched recursively for {", ".join(IMAGE_EXTENSIONS)} files (any case), following
  links to folders (each real folder once), read in sorted order and decoded with PIL's
  convert("RGB"); images may differ in size. Only the {", ".join(FORMATS)} decoders are used,
  whatever a file holds. Every file's header, in A and in B, is read before the first image is
  processed, and the number of images of each side is printed on stderr. A .npz file holds
  statistics: written by `{PROG} stats`, by pytorch-fid --save-stats, by clean-fid, or an ADM
  reference batch; an EDM2 reference .pkl (its FID statistics, read without unpickling anything
  but numpy arrays). It must match --feature, --compat and the weights; when A and B are both
  statistics files, the FID comes from them alone. Ours record their definition of FID, an ADM
  reference batch is TensorFlow's, and clean-fid's files say theirs in their name
  (<name>_clean_<split>_<res>.npz: clean-fid; _legacy_tensorflow_: tensorflow); for any other
  (pytorch-fid --save-stats) --compat says what it holds, and without it the run stops. The
  definition used is printed on stderr (in --json: "compat", "extractor"). A .npz
  holding arr_0 and no mu is a sample batch (guided-diffusion, DiT, EDM): (N, H, W, 3) uint8
  images, read --batch-size at a time; `{PROG} stats` takes one too. An ADM reference batch holds
  both: its stored mu/sigma (and mu_s/sigma_s) serve FID and sFID, as in ADM's evaluator, unless
  --metrics asks for prc or kid, which need its images: then every number, FID included, comes
  from its images, and stderr says so. --metrics is scores B's images (B must hold images).

exit codes:
  0    success
  1    any other failure, e.g. the Inception weights can be neither found nor downloaded
       (pass --weights or set {WEIGHTS_ENV_PATH})
  2    bad input, reported as one line "{PROG}: error: ..." before any image is processed: a usage
       error (e.g. --batch-size above {MAX_BATCH_SIZE}, a --device that cannot run), a missing path, a
       path that is neither a folder nor a .npz file, a folder that cannot be listed or holds fewer
       than 2 images, an unreadable image (unless --skip-bad-images), a corrupt statistics file, one
       made with another --feature, --compat or weights file, an -o file that cannot be written or
       that is the input, launcher variables that do not fit together, or peers that did not start
       within --join-timeout; an image whose pixel data is cut short is found only when it is decoded
  130  interrupted (Ctrl-C), reported as one line "{PROG}: interrupted"
"""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like the command's other errors, instead of after the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: subcommands ``score`` and ``stats`` with the shared options; ``args.command`` is the
    subcommand's name."""
    formatter = argparse.RawDescriptionHelpFormatter
    common = _common_options()
    parser = _Parser(
        prog=PROG, description="Exact Fréchet Inception Distance.", epilog=EPILOG, formatter_class=formatter
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="{score,stats,compare}")
    score = commands.add_parser(
        "score", parents=[common], epilog=EPILOG, formatter_class=formatter, help="print the FID between A and B"
    )
    _add_score_options(score)
    score.set_defaults(command="score")
    stats = commands.add_parser(
        "stats", parents=[common], epilog=EPILOG, formatter_class=formatter, help="save a folder's statistics"
    )
    stats.add_argument("folder", metavar="FOLDER", help="image folder or .npz sample batch (arr_0)")
    stats.add_argument("-o", "--output", required=True, metavar="OUT.npz", help="statistics file to write")
    _add_groups(
        stats,
        None,
        "also save the sums of G groups of the images (image j in group j %% G), for `compare` and FID +- stderr "
        "(16.8 MB a group at 2048 features)",
    )
    stats.set_defaults(command="stats", metrics=["fid"], **_UNUSED_SCORE_OPTIONS)
    compare = commands.add_parser(
        "compare", parents=[common], epilog=EPILOG, formatter_class=formatter, help="is A's FID lower than B's?"
    )
    _add_compare_options(compare)
    return parser


# score's --metrics settings, which stats and compare (FID alone) do not take, at score's defaults
_UNUSED_SCORE_OPTIONS = {
    "kid_subsets": 100,
    "kid_subset_size": None,
    "kid_seed": 2020,
    "is_split_size": 5000,
    "dc_neighborhood": 5,
    "cmmd_weights": None,
}


def _add_groups(command: argparse.ArgumentParser, default: int | None, help: str) -> None:
    """``--groups G`` (G >= 2): the generated images in G groups for the jackknife's standard errors."""
    command.add_argument("--groups", type=_int_in(2), default=default, metavar="G", help=help)


def _add_compare_options(compare: argparse.ArgumentParser) -> None:
    """``compare``'s own arguments: REF, A, B, ``--groups``, ``--json``."""
    compare.add_argument("ref", metavar="REF", help="the reference: image folder, .npz statistics or sample batch")
    for name in ("a", "b"):
        compare.add_argument(
            name,
            metavar=name.upper(),
            help=f"model {name.upper()}'s images (folder or sample batch) or statistics saved with `stats --groups`",
        )
    _add_groups(
        compare,
        None,
        "groups of each model's images for the jackknife (image j in group j %% G); default: the statistics "
        "files' G, else 10",
    )
    compare.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: "fid_a", "fid_b", "difference", "stderr", "ci95" ([low, high]), "p_value", '
        '"paired", "df" (of the t distribution), "n_ref", "n_a", "n_b"',
    )
    compare.set_defaults(command="compare", metrics=["fid"], **_UNUSED_SCORE_OPTIONS)


def _common_options() -> _Parser:
    """The options both commands take."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--feature",
        type=_feature,
        default=2048,
        metavar="{64,192,768,2048,clip}",
        help="Inception feature layer, or clip: FD on CLIP ViT-B/32 features as clean-fid computes it "
        "(model_name='clip_vit_b_32'; --weights then names that network's file); default: 2048",
    )
    common.add_argument(
        "--compat",
        choices=COMPAT_MODES,
        default=None,
        help="the definition of FID to reproduce (its preprocessing); also what a statistics file that does not "
        "record its own holds; default: tensorflow",
    )
    common.add_argument(
        "--weights", type=_existing_file, metavar="PATH", help="pt_inception-2015-12-05 weights (or --feature's)"
    )
    common.add_argument("--batch-size", type=_int_in(1, MAX_BATCH_SIZE), default=50, metavar="N", help="default: 50")
    common.add_argument(
        "--device",
        type=_device,
        default=_DefaultDevice("cuda if available, else cpu"),
        help="where Inception runs; default: cuda if available, else cpu",
    )
    common.add_argument(
        "--workers",
        type=_int_in(0),
        default=min(8, os.cpu_count() or 1),
        metavar="N",
        help="image decoding processes (0: in the main process), and header-reading threads; default: min(8, CPUs)",
    )
    common.add_argument(
        "--skip-bad-images", action="store_true", help="leave out files that cannot be read, with a warning each"
    )
    common.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    common.add_argument(
        "--join-timeout",
        type=_seconds,
        default=JOIN_TIMEOUT,
        metavar="SECONDS",
        help=f"under torchrun, how long each process waits for the others to start; default: {JOIN_TIMEOUT:g}",
    )
    return common


def _add_score_options(score: argparse.ArgumentParser) -> None:
    """``score``'s own arguments: A, B, ``--metrics`` and its settings, ``--json``."""
    score.add_argument("a", metavar="A", help="image folder, .npz statistics or .npz sample batch (arr_0)")
    score.add_argument("b", metavar="B", help="image folder, .npz statistics or .npz sample batch (arr_0)")
    score.add_argument(
        "--metrics",
        type=_metric_names,
        default=["fid"],
        metavar="LIST",
        help="comma-separated, of fid, sfid, is (Inception Score of B), prc (precision of B and recall of A), kid, "
        "dc (density and coverage of B against A), cmmd (CMMD, on CLIP ViT-L/14@336px embeddings); default: fid "
        "(printed alone, as a number)",
    )
    _add_cmmd_and_dc_options(score)
    score.add_argument("--kid-subsets", type=_int_in(1), default=100, metavar="N", help="KID subsets; default: 100")
    score.add_argument(
        "--kid-subset-size",
        type=_int_in(2),
        default=None,
        metavar="N",
        help="KID images per side per subset; default: 1000, or the smaller side's image count when that is "
        "smaller (as clean-fid does; a note says so)",
    )
    score.add_argument(
        "--is-split-size",
        type=_int_in(1),
        default=5000,
        metavar="N",
        help="Inception Score splits of N consecutive images of B, as ADM's evaluator (whose IS the diffusion papers "
        "print); with more than N images the std over splits follows +-; default: 5000",
    )
    score.add_argument(
        "--kid-seed",
        type=_int_in(0),
        default=2020,
        metavar="N",
        help="seed of KID's subsets (torch-fidelity's); default: 2020",
    )
    _add_groups(
        score,
        None,
        "G groups of B's images (image j in group j %% G): each number of B's images gets a jackknife standard "
        "error, printed after +- (FID: 12.34 +- 0.05) and in --json as NAME_stderr; needs images as B (statistics "
        "saved with `stats --groups` give FID +- stderr without it)",
    )
    score.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: every number --metrics asks for (fid, sfid, inception_score, inception_score_std,"
        ' precision, recall, kid, kid_std), "n_a", "n_b" (images used; for a statistics file its count or null), '
        '"found_a", "found_b" (image files found; null for statistics), "compat", "feature_dim", "processes", '
        '"seconds"',
    )


def _add_cmmd_and_dc_options(score: argparse.ArgumentParser) -> None:
    """``score``'s settings of CMMD (its network's weights) and density/coverage (k)."""
    score.add_argument(
        "--cmmd-weights",
        type=_existing_file,
        metavar="PATH",
        help="CMMD's CLIP ViT-L/14@336px weights (open_clip's open_clip_model.safetensors of "
        "timm/vit_large_patch14_clip_336.openai); default: $FID_METRIC_CLIP_L14_336_WEIGHTS, the torch hub cache",
    )
    score.add_argument(
        "--dc-neighborhood", type=_int_in(1), default=5, metavar="K", help="density/coverage's k; default: 5 (prdc's)"
    )


class _DefaultDevice(str):
    """``--device``'s default. argparse converts a string default with the option's type once parsing succeeded
    (after ``--help`` has answered), like a typed value, so its errors are the same one line; its type tells it
    apart from anything typed, and ``_device`` then picks cuda if available, else cpu."""


def _device(text: str) -> torch.device:
    """An argparse type: a ``torch.device`` on which a tensor can be made, computed on and copied back."""
    import torch

    if isinstance(text, _DefaultDevice):
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (expected e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"cannot use {text!r}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise argparse.ArgumentTypeError(
            f"cannot use {text!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    try:
        torch.ones(1, device=device).add_(1).cpu()
    except Exception as err:  # each backend fails its own way: RuntimeError, NotImplementedError (meta), ...
        raise argparse.ArgumentTypeError(f"cannot use {text!r}: {one_line(err).split('. ')[0]}") from err
    return device


def _seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _existing_file(text: str) -> Path:
    """An argparse type: the path of an existing file."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    return Path(text)


def _int_in(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a decimal integer from ``minimum`` (>= 0) to ``maximum`` (None: no bound)."""
    expected = f"an integer from {minimum} to {maximum}" if maximum is not None else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        value = int(text) if text.isascii() and text.isdigit() else -1
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def _feature(text: str) -> int | str:
    """An argparse type: ``--feature``, an Inception pool layer's width or ``clip``."""
    if text.strip().lower() == CLIP_FEATURE:
        return CLIP_FEATURE
    if text.strip().isdigit() and int(text) in POOL_FEATURES:
        return int(text)
    raise argparse.ArgumentTypeError(
        f"expected one of {', '.join(map(str, POOL_FEATURES))} or {CLIP_FEATURE}, got {text!r}"
    )


def _metric_names(text: str) -> list[str]:
    """An argparse type: comma-separated ``--metrics`` names, returned in the table's order."""
    names = {name.strip().lower() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(METRICS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected names from {', '.join(METRICS)}, got {text!r}")
    return [name for name in METRICS if name in names]


def one_line(err: BaseException | str) -> str:
    """A message with its whitespace, line breaks included, collapsed; an exception's type name if it has none."""
    return " ".join(str(err).split()) or type(err).__name__
