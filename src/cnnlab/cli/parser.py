"""The `cnnlab` argument parser: every subcommand, its flags, and the handler it calls.

Handlers are looked up on their modules each time the parser is built, so a replaced one is used.
"""

from __future__ import annotations

import argparse
import typing

from cnnlab import __version__
from cnnlab.cli import datasets, inspection, training

EXIT_USER_ERROR = 2


def _add_run_fields(parser: argparse.ArgumentParser) -> None:
    """One flag per run field (`cnnlab.config.RULES`): type, help, choices and default there."""
    from cnnlab import config

    for name in config.SETTABLE:
        rule = config.RULES[name]
        default = config.DEFAULTS[name]
        shown = rule.none_means if default is None else default
        if rule.kind is bool:
            shown = str(default).lower()
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=_boolean if rule.kind is bool else rule.kind,
            choices=rule.choices or None,
            default=None,
            metavar="true|false" if rule.kind is bool else None if rule.choices else name.upper(),
            help=f"{rule.help} (default: {shown})",
        )


def _add_arch_fields(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch-field",
        dest="arch_field",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a module net's own field, passed to its factory (repeatable; VALUE as in TOML:"
        " 32, 0.5, true, or a string)",
    )


def _boolean(text: str) -> bool:
    """A true/false flag value, as TOML spells it (also yes/no, on/off, 1/0)."""
    value = {"true": True, "yes": True, "on": True, "1": True}.get(text.lower())
    if value is None and text.lower() not in ("false", "no", "off", "0"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")
    return bool(value)


def _image_size(text: str) -> int | tuple[int, int]:
    """'28' or '28x32' (height x width)."""
    try:
        parts = [int(part) for part in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts, default=0) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SIZE or HEIGHTxWIDTH, e.g. 28x28")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def _add_dataset_option(parser: argparse.ArgumentParser, *, named: bool = True) -> None:
    """--dataset (where it is not a run field), --image-size and --resample."""
    from cnnlab import config

    if named:
        parser.add_argument(
            "--dataset",
            default=config.RunConfig.dataset,
            choices=tuple(config.DATASET_SHAPES),
            help="which dataset (default: cifar10); 'images' is any image-folder dataset",
        )
    parser.add_argument(
        "--image-size",
        type=_image_size,
        default=None,
        metavar="SIZE",
        help="resize image-folder images to SIZE or HxW (needed when their sizes differ)",
    )
    parser.add_argument(
        "--resample",
        default=None,
        choices=("nearest", "bilinear", "bicubic", "lanczos"),
        help="how --image-size resizes (Pillow's filter; default: bilinear)",
    )


def _add_connect_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connect-timeout",
        default=None,
        metavar="SECONDS",
        help="how long an MLflow server or a Ray cluster may take to answer"
        " (default: $CNNLAB_CONNECT_TIMEOUT, else 5)",
    )


def _add_no_explain(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-explain",
        action="store_true",
        help="skip the explain step (feature maps and Grad-CAM of each experiment's best run)",
    )


def _add_data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        metavar="PATH",
        help="the dataset's source: its official files (archive or folder), or an image-folder "
        "directory/.zip/.tar/.tar.gz (default: $CNNLAB_DATA[_NAME], then the cache, then a "
        "download)",
    )


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake in the arguments as one line and exit code 2 like any other."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cnnlab", description="A laboratory for convolutional networks on small image datasets"
    )
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="inspect, show or fetch a dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    info = data_commands.add_parser("info", help="source, checksum, counts, channel statistics")
    _add_data_option(info)
    _add_dataset_option(info)
    info.set_defaults(handler=datasets.cmd_data_info)
    show = data_commands.add_parser("show", help="write a PNG grid of sample images per class")
    _add_data_option(show)
    _add_dataset_option(show)
    show.add_argument("--out", default="samples.png", metavar="FILE", help="PNG to write")
    show.add_argument("--per-class", type=int, default=8, metavar="N", help="images per class")
    show.add_argument("--split", choices=["train", "test"], default="train")
    show.set_defaults(handler=datasets.cmd_data_show)
    fetch = data_commands.add_parser("fetch", help="download and verify the official files")
    fetch.add_argument("--dest", metavar="DIR", help="where to keep it (default: the cache)")
    _add_dataset_option(fetch)
    fetch.set_defaults(handler=datasets.cmd_data_fetch)

    convolve = commands.add_parser("convolve", help="filter images with kernels (NumPy, by hand)")
    convolve.add_argument("images", nargs="*", metavar="IMAGE", help="image files to filter")
    convolve.add_argument("--sample", action="store_true", help="also use the two drawn samples")
    convolve.add_argument(
        "--kernel",
        action="append",
        required=True,
        metavar="K",
        help="a kernel name (laplacian8, laplacian4-boost, sobel-x, gaussian:7:1.5, ...; an "
        "unknown name lists them all), a literal like '[[0,-1,0],[-1,8,-1],[0,-1,0]]', or a "
        ".npy/.txt file; repeatable",
    )
    convolve.add_argument(
        "--channel", choices=["red", "green", "blue", "gray", "all"], default="red"
    )
    convolve.add_argument("--mode", choices=["same", "valid", "full"], default="same")
    convolve.add_argument(
        "--boundary", choices=["fill", "reflect", "symmetric", "wrap"], default="fill"
    )
    convolve.add_argument(
        "--scale",
        choices=["clip", "abs", "stretch"],
        default="clip",
        help="float result -> 8 bit: clip to 0..255, absolute value, or stretch min..max",
    )
    convolve.add_argument(
        "--correlate",
        action="store_true",
        help="slide the kernel without flipping it (what the report computed)",
    )
    convolve.add_argument("--out", default="convolved", metavar="DIR")
    convolve.set_defaults(handler=inspection.cmd_convolve)

    archs = commands.add_parser(
        "archs", help="list the registered architectures and the installed module nets"
    )
    archs.set_defaults(handler=inspection.cmd_archs)
    summary = commands.add_parser("summary", help="Keras-style layer table of an architecture")
    summary.add_argument("arch", metavar="ARCH")
    _add_arch_fields(summary)
    _add_data_option(summary)
    _add_dataset_option(summary)
    summary.add_argument(
        "--detail",
        action="store_true",
        help="add each layer's MACs, activation memory and receptive field (size and jump)",
    )
    summary.set_defaults(handler=inspection.cmd_summary)

    train = commands.add_parser("train", help="train one ConvNet with Keras semantics")
    _add_data_option(train)
    _add_run_fields(train)
    _add_arch_fields(train)
    _add_dataset_option(train, named=False)
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--out", default=None, metavar="DIR", help="run folder to write")
    train.set_defaults(handler=training.cmd_train)

    evaluate = commands.add_parser("evaluate", help="re-evaluate a run folder's saved weights")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    _add_data_option(evaluate)
    _add_dataset_option(evaluate, named=False)
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(handler=training.cmd_evaluate)

    study = commands.add_parser("study", help="run a study file (resumable) and write its report")
    study.add_argument("study_file", metavar="FILE")
    _add_data_option(study)
    study.add_argument(
        "--out", default=None, metavar="DIR", help="study folder (default: results/<study name>)"
    )
    study.add_argument(
        "--repeats",
        type=int,
        default=None,
        metavar="N",
        help="seeds per grid point (default: the study file's)",
    )
    study.add_argument("--dry-run", action="store_true", help="list the runs, run nothing")
    study.add_argument(
        "--force",
        action="store_true",
        help="use an output folder that belongs to a different study",
    )
    study.add_argument("--device", default="auto")
    study.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="runs trained side by side: CPU worker processes (default: one per core), or"
        " groups of runs on CUDA streams (default: all, up to 8); 1 trains one after another"
        " in this process",
    )
    study.add_argument(
        "--backend",
        choices=("local", "ray"),
        default=None,
        help="where runs train: local (default) or ray (Ray tasks; pip install 'cnnlab[ray]')",
    )
    study.add_argument(
        "--address",
        default=None,
        metavar="HOST:PORT",
        help="with --backend ray: the cluster to join (default: $RAY_ADDRESS, else a local Ray)",
    )
    study.add_argument(
        "--log",
        action="append",
        default=[],
        metavar="tensorboard:DIR|mlflow:URI",
        help="log the runs live as they train (repeatable; needs cnnlab[tensorboard|mlflow])",
    )
    _add_connect_timeout(study)
    _add_no_explain(study)
    study.set_defaults(handler=training.cmd_study)

    export = commands.add_parser(
        "export", help="export a study's runs to TensorBoard and/or MLflow"
    )
    export.add_argument("study_dir", metavar="STUDY_DIR")
    export.add_argument("--tensorboard", metavar="DIR", help="write TensorBoard event files here")
    export.add_argument(
        "--mlflow", metavar="URI", help="sqlite:///FILE.db, file:///DIR or http(s)://HOST:PORT"
    )
    _add_connect_timeout(export)
    export.set_defaults(handler=training.cmd_export)

    results = commands.add_parser("results", help="print or export a study's results")
    results.add_argument("study_dir", metavar="STUDY_DIR")
    results.add_argument("--format", choices=["table", "csv", "json"], default="table")
    results.set_defaults(handler=inspection.cmd_results)

    compare = commands.add_parser("compare", help="show what differs between runs")
    compare.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="run ids (in a study folder given by --study) or run folders; or two grid points"
        " FIELD=VALUE[,FIELD=VALUE] with --study: their seeds' test accuracy, tested",
    )
    compare.add_argument("--study", metavar="STUDY_DIR", default=None)
    compare.set_defaults(handler=inspection.cmd_compare)

    report = commands.add_parser("report", help="write report.md and report.html for a study")
    report.add_argument("study_dir", metavar="STUDY_DIR")
    _add_no_explain(report)
    report.set_defaults(handler=inspection.cmd_report)

    explain = commands.add_parser(
        "explain", help="a run's feature maps, first kernels, Grad-CAM and saliency (PNG, HTML)"
    )
    explain.add_argument("run_dir", metavar="RUN_DIR")
    explain.add_argument(
        "--image", action="append", default=[], metavar="PATH", help="an image file (repeatable)"
    )
    explain.add_argument(
        "--test-index",
        action="append",
        default=[],
        type=int,
        metavar="N",
        help="the test set's image N (repeatable; default: the run's kept misclassified images)",
    )
    explain.add_argument("--out", metavar="DIR", help="where to write (default: RUN_DIR/explain)")
    explain.add_argument(
        "--layer",
        metavar="NAME",
        default=None,
        help="the layer Grad-CAM reads (a conv layer's name as the page lists them; a module"
        " net's module by its own name; default: the last conv layer)",
    )
    _add_data_option(explain)
    _add_dataset_option(explain, named=False)
    explain.set_defaults(handler=inspection.cmd_explain)

    export_model = commands.add_parser(
        "export-model", help="write a run's trained net as ONNX (checked with ONNX Runtime)"
    )
    export_model.add_argument("run_dir", metavar="RUN_DIR")
    export_model.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file")
    export_model.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    export_model.set_defaults(handler=inspection.cmd_export_model)
    return parser
