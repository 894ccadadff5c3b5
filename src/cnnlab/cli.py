"""The `cnnlab` command: parse arguments, call the library, print. No logic of its own.

Each subcommand has one `_cmd_*` handler below. User mistakes raise `CnnlabError`, which `main`
prints as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cnnlab import __version__
from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    from cnnlab.config import RunConfig

EXIT_USER_ERROR = 2


# --- data -------------------------------------------------------------------------------------


def _cmd_data_info(args: argparse.Namespace) -> int:
    import numpy as np

    from cnnlab.data.datasets import load_dataset_with_cache_info

    loaded = load_dataset_with_cache_info(args.dataset, args.data, **_load_options(args))
    data = loaded.dataset
    train_counts = np.bincount(data.train_labels, minlength=len(data.class_names))
    test_counts = np.bincount(data.test_labels, minlength=len(data.class_names))
    width = max(len("class"), *(len(name) for name in data.class_names))
    print(f"dataset: {data.name}, {'x'.join(map(str, data.input_shape))} images")
    print(f"source: {data.source}")
    print(f"sha256: {data.source_sha256}")
    print(f"{'class':<{width}}  {'train':>6}  {'test':>6}")
    for name, train, test in zip(data.class_names, train_counts, test_counts, strict=True):
        print(f"{name:<{width}}  {train:>6,}  {test:>6,}")
    print(f"{'total':<{width}}  {train_counts.sum():>6,}  {test_counts.sum():>6,}")
    mean = " ".join(f"{value:.4f}" for value in loaded.train_channel_mean)
    std = " ".join(f"{value:.4f}" for value in loaded.train_channel_std)
    channels = "R G B" if len(loaded.train_channel_mean) == 3 else "gray"
    print(f"train mean ({channels}, 0..1): {mean}")
    print(f"train std  ({channels}, 0..1): {std}")
    how = "loaded from the cache" if loaded.from_cache else "decoded now and cached"
    print(f"cache: {loaded.cache_path} ({how})")
    return 0


def _cmd_data_show(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cnnlab.data.datasets import load_dataset, sample_images_per_class
    from cnnlab.plots import class_samples_figure, save_figure

    data = load_dataset(args.dataset, args.data, **_load_options(args))
    images, labels = (
        (data.train_images, data.train_labels)
        if args.split == "train"
        else (data.test_images, data.test_labels)
    )
    samples = sample_images_per_class(images, labels, args.per_class)
    title = f"{data.name} {args.split}: {args.per_class} per class ({Path(data.source).name})"
    save_figure(class_samples_figure(samples, data.class_names, title), args.out)
    print(f"wrote {args.out}: {args.per_class} {args.split} images per class")
    return 0


def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from cnnlab.data.datasets import fetch_official

    if getattr(args, "image_size", None) is not None or getattr(args, "resample", None):
        raise CnnlabError("--image-size and --resample apply when data is loaded, not to fetch")
    path = fetch_official(args.dest, dataset=args.dataset)
    print(f"{path}: md5 and sha256 verified")
    return 0


# --- convolution ------------------------------------------------------------------------------


def _cmd_convolve(args: argparse.Namespace) -> int:
    from cnnlab.atomic import check_folder_target
    from cnnlab.conv import imaging

    # Check and compute everything first, so a bad image or kernel leaves no partial output.
    check_folder_target(args.out, "--out")
    kernels = imaging.parse_kernels(args.kernel)
    inputs = imaging.load_inputs(args.images, args.sample)
    operation = "correlate" if args.correlate else "convolve"
    everything = imaging.filter_images(
        inputs, kernels, args.channel, args.mode, args.boundary, args.scale, args.correlate
    )
    channels = "all channels" if args.channel == "all" else f"{args.channel} channel"
    caption = (
        f"{operation}, {channels}, mode {args.mode}, boundary {args.boundary}, "
        f"8-bit by {args.scale}"
    )
    for path in imaging.write_results(everything, args.out, caption):
        print(path)
    return 0


# --- models and training ----------------------------------------------------------------------


EXIT_DIVERGED = 3  # `cnnlab train`: the loss became NaN or infinite; the run folder is written


def _cmd_archs(args: argparse.Namespace) -> int:
    from cnnlab.nn.architectures import ARCHITECTURES, DESCRIPTIONS
    from cnnlab.nn.summary import architecture_summary

    counts = {
        name: f"{architecture_summary(layers)[1]:,}" for name, layers in ARCHITECTURES.items()
    }
    width = max(map(len, counts.values()))
    for name, count in counts.items():
        print(f"{name:<14}{count:>{width}} params  {DESCRIPTIONS.get(name, '')}")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from cnnlab import config
    from cnnlab.nn.architectures import get_architecture
    from cnnlab.nn.summary import format_summary

    shape_and_classes = config.DATASET_SHAPES[args.dataset]
    if shape_and_classes is None:
        from cnnlab.data.datasets import load_dataset

        data = load_dataset(args.dataset, args.data, **_load_options(args))
        shape_and_classes = (data.input_shape, data.num_classes)
    layers = get_architecture(args.arch)
    try:
        print(format_summary(args.arch, layers, *shape_and_classes, detail=args.detail))
    except CnnlabError as error:
        shape, classes = shape_and_classes
        raise CnnlabError(
            f"{args.arch} does not fit {args.dataset} ({'x'.join(map(str, shape))} images,"
            f" {classes} classes): {error}"
        ) from None
    return 0


def _epoch_line(row: dict) -> str:
    return (
        f"epoch {row['epoch']:>3}/{row['epochs']}  loss {row['loss']:.4f}  accuracy"
        f" {row['accuracy']:.4f}  val_loss {row['val_loss']:.4f}  val_accuracy"
        f" {row['val_accuracy']:.4f}  {row['elapsed']:.1f} s  ETA {row['eta']:.0f} s"
    )


def _cmd_train(args: argparse.Namespace) -> int:
    import contextlib
    import time

    from cnnlab.data.datasets import load_dataset
    from cnnlab.nn.specs import resolve_layers
    from cnnlab.training import loop, runfolder
    from cnnlab.training.device import resolve_device

    config = _run_config(args)
    # Mistakes in the arguments surface before the data is decoded.
    resolve_device(args.device)
    if config.dataset != "images":  # an image folder's shape is known once it is read
        resolve_layers(config)
    data = load_dataset(config.dataset, args.data, **_load_options(args))
    loop.subset_indices(config, data)  # the config against the data, before training
    out = args.out or (
        f"runs/{config.arch}-{config.train_size}-seed{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    runfolder.check_target(out)  # before training, not after
    with contextlib.ExitStack() as stack:
        if sys.stdout.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            display = stack.enter_context(
                Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
            )
            task = display.add_task(f"training {config.arch}", total=config.epochs)

            def progress(row: dict) -> None:
                display.console.print(_epoch_line(row))
                display.update(task, completed=row["epoch"])
        else:

            def progress(row: dict) -> None:
                print(_epoch_line(row), flush=True)

        result = loop.fit(config, data, device=args.device, progress=progress)
    runfolder.write_run_folder(
        result, out, data.class_names, test_images=data.test_images, test_labels=data.test_labels
    )
    metrics = result.metrics
    if result.status == "diverged":
        print(
            f"cnnlab: diverged: the loss is not finite at epoch {metrics['diverged_epoch']};"
            f" run folder {out}",
            file=sys.stderr,
        )
        return EXIT_DIVERGED
    print(
        f"train accuracy {metrics['train_accuracy']:.4f}  test accuracy"
        f" {metrics['test_accuracy']:.4f}  baseline {metrics['baseline_accuracy']:.4f}"
        f"  fit {metrics['fit_seconds']:.1f} s on {metrics['device']}  ->  {out}"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cnnlab.data.datasets import load_dataset
    from cnnlab.training import runfolder
    from cnnlab.training.metrics import report_text

    run = runfolder.load_run(args.run_dir)
    data = load_dataset(run.config.dataset, args.data, **_load_options(args))
    for split, (labels, scores) in runfolder.evaluate_run(run, data, args.device).items():
        saved = run.metrics.get(f"{split}_accuracy")
        was = f" (saved: {saved:.4f})" if isinstance(saved, float) else ""
        print(
            f"== {split}: {len(labels):,} images, accuracy {scores.accuracy:.4f}{was},"
            f" loss {scores.loss:.4f}"
        )
        print(report_text(labels, scores, data.class_names))
    return 0


# --- studies ----------------------------------------------------------------------------------


def _cmd_study(args: argparse.Namespace) -> int:
    from cnnlab.study import plan, runner
    from cnnlab.study.studyfile import load_study

    if args.dry_run:
        study = load_study(args.study_file)
        runs = plan.plan_runs(study, args.repeats)
        for line in plan.describe_plan(runs):
            print(line)
        for line in plan.describe_searches(study, args.repeats):
            print(line)
        print(f"{len(runs)} runs (dry run: nothing was trained)")
        return 0
    timeout = _probe_ray(args)  # a cluster that does not answer fails before anything is written
    logger = None
    if args.log:  # a bad spec or a missing extra fails before any data is loaded
        from cnnlab.tracking import export

        def warn(line: str) -> None:
            print(f"cnnlab: warning: {line}", file=sys.stderr)

        logger = export.open_loggers(args.log, on_error=warn, timeout=timeout)
    outcome = runner.run_study(
        args.study_file,
        out=args.out,
        data=args.data,
        repeats=args.repeats,
        force=args.force,
        device=args.device,
        workers=args.workers,
        echo=print,
        watchers=[_study_display()],
        logger=logger,
        backend=args.backend,
        address=args.address,
    )
    for line in runner.summary_lines(outcome):
        print(line)
    from cnnlab.insight.explain import explain_best_runs
    from cnnlab.report.report import build

    explain_best_runs(outcome.study_dir)  # feature maps and Grad-CAM for the report

    report = build(outcome.study_dir)
    for line in report.advice:  # too few seeds to tell a difference apart: say how many
        print(f"advice: {line}")
    print(f"report: {report.write()['html']}")
    return 1 if outcome.counts.get("failed") else 0


def _probe_ray(args: argparse.Namespace) -> float:
    """Reach the Ray cluster the study trains on, if any, within the connect timeout (returned)."""
    from cnnlab.study import runner
    from cnnlab.tracking import endpoints

    timeout = endpoints.connect_timeout(args.connect_timeout)
    study = runner.load_study(args.study_file)
    if (args.backend or study.backend) == "ray":
        address = args.address
        if address is None:
            address = study.address or os.environ.get("RAY_ADDRESS") or None
        endpoints.probe_ray(address, timeout)
    return timeout


def _study_display():
    """A live display of the study's progress on a terminal; plain lines anywhere else."""
    from cnnlab.study import progress

    return progress.LiveDisplay() if sys.stdout.isatty() else progress.Lines(print)


def _cmd_export(args: argparse.Namespace) -> int:
    from cnnlab.tracking import endpoints, export

    for line in export.export_study(
        args.study_dir,
        tensorboard=args.tensorboard,
        mlflow=args.mlflow,
        timeout=endpoints.connect_timeout(args.connect_timeout),
    ):
        print(line)
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    from cnnlab.report.tables import format_results
    from cnnlab.store import Store

    with Store.open(args.study_dir, create=False) as store:
        records = store.runs()
    print(format_results(records, args.format))
    if args.format == "table":
        from cnnlab.report.search import trial_lines

        for line in trial_lines(args.study_dir):  # a search's trials, after its runs
            print(line)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from cnnlab.report.tables import compare_points, compare_runs, is_point, run_summary

    if any(is_point(run) for run in args.runs):  # two grid points: their seeds, tested
        if len(args.runs) != 2 or args.study is None:
            raise CnnlabError("compare: grid points (FIELD=VALUE) go in twos, with --study DIR")
        print(compare_points(args.study, *args.runs))
        return 0
    print(compare_runs([run_summary(run, args.study) for run in args.runs]))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from cnnlab.report.report import write_report

    paths = write_report(args.study_dir)
    print(f"report: {paths['html']} (and {paths['md']})")
    return 0


# --- inside a trained net ---------------------------------------------------------------------


def _cmd_explain(args: argparse.Namespace) -> int:
    from cnnlab.insight.explain import explain

    done = explain(
        args.run_dir,
        images=args.image,
        test_indices=args.test_index,
        data=args.data,
        out=args.out,
        **_load_options(args),
    )
    print(f"explain: {done.page} ({len(done.images)} images, {len(done.pngs)} PNGs)")
    return 0


def _cmd_export_model(args: argparse.Namespace) -> int:
    from cnnlab.insight.onnx_export import export_model

    path, difference = export_model(args.run_dir, args.onnx, force=args.force)
    print(f"onnx: {path} (ONNX Runtime agrees with PyTorch to {difference:.1e})")
    return 0


# --- the parser -------------------------------------------------------------------------------


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


def _boolean(text: str) -> bool:
    """A true/false flag value, as TOML spells it (also yes/no, on/off, 1/0)."""
    value = {"true": True, "yes": True, "on": True, "1": True}.get(text.lower())
    if value is None and text.lower() not in ("false", "no", "off", "0"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")
    return bool(value)


def _run_config(args: argparse.Namespace) -> RunConfig:
    """The RunConfig the run-field flags describe, checked; a bad value names its flag."""
    from cnnlab import config

    given = {name: getattr(args, name) for name in config.SETTABLE}
    run = config.RunConfig(**{name: value for name, value in given.items() if value is not None})
    try:
        config.check_config(run)
    except config.ConfigError as error:
        flag = "--" + error.key.replace("_", "-")
        raise CnnlabError(f"{flag} {getattr(run, error.key)}: {error.reason}") from None
    return run


def _load_options(args: argparse.Namespace) -> dict:
    """How to load image folders of mixed sizes: `--image-size` and `--resample`."""
    if getattr(args, "image_size", None) is None:
        if getattr(args, "resample", None) is not None:
            raise CnnlabError("--resample only applies with --image-size (it says how to resize)")
        return {}
    return {"image_size": args.image_size, "resample": args.resample or "bilinear"}


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
    info.set_defaults(handler=_cmd_data_info)
    show = data_commands.add_parser("show", help="write a PNG grid of sample images per class")
    _add_data_option(show)
    _add_dataset_option(show)
    show.add_argument("--out", default="samples.png", metavar="FILE", help="PNG to write")
    show.add_argument("--per-class", type=int, default=8, metavar="N", help="images per class")
    show.add_argument("--split", choices=["train", "test"], default="train")
    show.set_defaults(handler=_cmd_data_show)
    fetch = data_commands.add_parser("fetch", help="download and verify the official files")
    fetch.add_argument("--dest", metavar="DIR", help="where to keep it (default: the cache)")
    _add_dataset_option(fetch)
    fetch.set_defaults(handler=_cmd_data_fetch)

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
    convolve.set_defaults(handler=_cmd_convolve)

    archs = commands.add_parser("archs", help="list the registered architectures")
    archs.set_defaults(handler=_cmd_archs)
    summary = commands.add_parser("summary", help="Keras-style layer table of an architecture")
    summary.add_argument("arch", metavar="ARCH")
    _add_data_option(summary)
    _add_dataset_option(summary)
    summary.add_argument(
        "--detail",
        action="store_true",
        help="add each layer's MACs, activation memory and receptive field (size and jump)",
    )
    summary.set_defaults(handler=_cmd_summary)

    train = commands.add_parser("train", help="train one ConvNet with Keras semantics")
    _add_data_option(train)
    _add_run_fields(train)
    _add_dataset_option(train, named=False)
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--out", default=None, metavar="DIR", help="run folder to write")
    train.set_defaults(handler=_cmd_train)

    evaluate = commands.add_parser("evaluate", help="re-evaluate a run folder's saved weights")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    _add_data_option(evaluate)
    _add_dataset_option(evaluate, named=False)
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(handler=_cmd_evaluate)

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
    study.set_defaults(handler=_cmd_study)

    export = commands.add_parser(
        "export", help="export a study's runs to TensorBoard and/or MLflow"
    )
    export.add_argument("study_dir", metavar="STUDY_DIR")
    export.add_argument("--tensorboard", metavar="DIR", help="write TensorBoard event files here")
    export.add_argument(
        "--mlflow", metavar="URI", help="sqlite:///FILE.db, file:///DIR or http(s)://HOST:PORT"
    )
    _add_connect_timeout(export)
    export.set_defaults(handler=_cmd_export)

    results = commands.add_parser("results", help="print or export a study's results")
    results.add_argument("study_dir", metavar="STUDY_DIR")
    results.add_argument("--format", choices=["table", "csv", "json"], default="table")
    results.set_defaults(handler=_cmd_results)

    compare = commands.add_parser("compare", help="show what differs between runs")
    compare.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="run ids (in a study folder given by --study) or run folders; or two grid points"
        " FIELD=VALUE[,FIELD=VALUE] with --study: their seeds' test accuracy, tested",
    )
    compare.add_argument("--study", metavar="STUDY_DIR", default=None)
    compare.set_defaults(handler=_cmd_compare)

    report = commands.add_parser("report", help="write report.md and report.html for a study")
    report.add_argument("study_dir", metavar="STUDY_DIR")
    report.set_defaults(handler=_cmd_report)

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
    _add_data_option(explain)
    _add_dataset_option(explain, named=False)
    explain.set_defaults(handler=_cmd_explain)

    export_model = commands.add_parser(
        "export-model", help="write a run's trained net as ONNX (checked with ONNX Runtime)"
    )
    export_model.add_argument("run_dir", metavar="RUN_DIR")
    export_model.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file")
    export_model.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    export_model.set_defaults(handler=_cmd_export_model)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CnnlabError as error:
        print(f"cnnlab: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        # Stopped, with exit code 130, never a death by SIGINT. A later Ctrl-C is ignored on
        # the way out. And CPython (3.11, 3.12) marks the interpreter to kill itself by SIGINT
        # at exit whenever a KeyboardInterrupt leaves an exec() of a string, handled or not:
        # every dataclass defined by a lazy import is one, so a Ctrl-C during an import left
        # the mark. It clears the mark at the start of each such exec, so an empty one clears it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        exec("")  # clears the mark (see above)
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left (`cnnlab results | head -1`): stop quietly, as a shell tool would.
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as error:
        if error.errno not in _ENVIRONMENT_ERRORS:
            raise
        where = f"{error.filename}: " if error.filename else ""
        print(f"cnnlab: error: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_USER_ERROR


# A full disk, a read-only or unwritable place, a quota: one line, not a traceback.
_ENVIRONMENT_ERRORS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
}
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process ended by SIGPIPE


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that flushing it at exit raises nothing more."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
