"""Commands that look and print, training nothing.

`cnnlab convolve`, `archs`, `summary`, `results`, `compare`, `report`, `explain`, `export-model`.
"""

from __future__ import annotations

import argparse

from cnnlab.cli.options import load_options, refuse_resizing
from cnnlab.errors import CnnlabError

# --- convolution ------------------------------------------------------------------------------


def cmd_convolve(args: argparse.Namespace) -> int:
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


# --- models -----------------------------------------------------------------------------------


def cmd_archs(args: argparse.Namespace) -> int:
    from cnnlab.nn.architectures import ARCHITECTURES, DESCRIPTIONS
    from cnnlab.nn.summary import architecture_summary

    counts = {
        name: f"{architecture_summary(layers)[1]:,}" for name, layers in ARCHITECTURES.items()
    }
    width = max(map(len, counts.values()))
    for name, count in counts.items():
        print(f"{name:<14}{count:>{width}} params  {DESCRIPTIONS.get(name, '')}")
    for line in module_net_lines():
        print(line)
    return 0


def module_net_lines() -> list[str]:
    """One line per installed module net: its package, fields and description."""
    from cnnlab.nn import architectures

    lines = []
    for name, found in architectures.module_architectures().items():
        try:
            fields = architectures.factory_fields(name)
            about = architectures.describe_module_net(name)
            shown = ", ".join(f"{field}={spec.default!r}" for field, spec in fields.items())
        except CnnlabError as error:
            about, shown = f"cannot be loaded: {error}", "-"
        lines.append(
            f"{name:<14}module net from {found.package} {found.version}  fields: {shown or '-'}"
            f"  {about}"
        )
    return lines


def cmd_summary(args: argparse.Namespace) -> int:
    from cnnlab import config
    from cnnlab.config import RunConfig
    from cnnlab.nn.architectures import get_architecture, is_module_net
    from cnnlab.nn.summary import format_summary

    refuse_resizing(args, args.dataset, "summary describes the net on them as they are")
    options = load_options(args)  # --resample without --image-size is refused here too
    shape_and_classes = config.DATASET_SHAPES[args.dataset]
    if shape_and_classes is None:
        from cnnlab.data.datasets import load_dataset

        data = load_dataset(args.dataset, args.data, **options)
        shape_and_classes = (data.input_shape, data.num_classes)
    if is_module_net(RunConfig(arch=args.arch)):
        return _module_summary(args, shape_and_classes)
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


def _module_summary(args: argparse.Namespace, shape_and_classes: tuple) -> int:
    from cnnlab.cli.options import with_arch_fields
    from cnnlab.config import RunConfig
    from cnnlab.nn.module_nets import build_module_net, check_module_net, module_summary

    config = with_arch_fields(RunConfig(arch=args.arch), args.arch_field)
    check_module_net(config, *shape_and_classes)
    model = build_module_net(config, *shape_and_classes)
    print(module_summary(model, args.arch, shape_and_classes[1]))
    return 0


# --- a study's results ------------------------------------------------------------------------


def cmd_results(args: argparse.Namespace) -> int:
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


def cmd_compare(args: argparse.Namespace) -> int:
    from cnnlab.report.tables import compare_points, compare_runs, is_point, run_summary

    if any(is_point(run) for run in args.runs):  # two grid points: their seeds, tested
        if len(args.runs) != 2 or args.study is None:
            raise CnnlabError("compare: grid points (FIELD=VALUE) go in twos, with --study DIR")
        print(compare_points(args.study, *args.runs))
        return 0
    print(compare_runs([run_summary(run, args.study) for run in args.runs]))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cnnlab.report.report import write_report

    paths = write_report(args.study_dir, explain=not args.no_explain)
    print(f"report: {paths['html']} (and {paths['md']})")
    return 0


# --- inside a trained net ---------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    from cnnlab.insight.explain import explain

    done = explain(
        args.run_dir,
        images=args.image,
        test_indices=args.test_index,
        data=args.data,
        out=args.out,
        layer=args.layer,
        **load_options(args),
    )
    print(f"explain: {done.page} ({len(done.images)} images, {len(done.pngs)} PNGs)")
    return 0


def cmd_export_model(args: argparse.Namespace) -> int:
    from cnnlab.insight.onnx_export import export_model

    path, difference = export_model(args.run_dir, args.onnx, force=args.force)
    print(f"onnx: {path} (ONNX Runtime agrees with PyTorch to {difference:.1e})")
    return 0
