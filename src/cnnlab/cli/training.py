"""Commands that train: `cnnlab train`, `evaluate`, `study` and `export` (a study's runs)."""

from __future__ import annotations

import argparse
import os
import sys

from cnnlab.cli.options import load_options, refuse_resizing, run_config

EXIT_DIVERGED = 3  # `cnnlab train`: the loss became NaN or infinite; the run folder is written


# --- one run ----------------------------------------------------------------------------------


def _epoch_line(row: dict) -> str:
    return (
        f"epoch {row['epoch']:>3}/{row['epochs']}  loss {row['loss']:.4f}  accuracy"
        f" {row['accuracy']:.4f}  val_loss {row['val_loss']:.4f}  val_accuracy"
        f" {row['val_accuracy']:.4f}  {row['elapsed']:.1f} s  ETA {row['eta']:.0f} s"
    )


def cmd_train(args: argparse.Namespace) -> int:
    import contextlib
    import time

    from cnnlab.data.datasets import load_dataset
    from cnnlab.nn.shapes import resolve_layers
    from cnnlab.training import loop, runfolder
    from cnnlab.training.device import resolve_device

    config = run_config(args)
    # Mistakes in the arguments surface before the data is decoded.
    refuse_resizing(args, config.dataset, "a run's config does not record a resize")
    resolve_device(args.device)
    if config.dataset != "images":  # an image folder's shape is known once it is read
        resolve_layers(config)
    data = load_dataset(config.dataset, args.data, **load_options(args))
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cnnlab.data.datasets import load_dataset
    from cnnlab.training import runfolder
    from cnnlab.training.metrics import report_text

    run = runfolder.load_run(args.run_dir)
    data = load_dataset(run.config.dataset, args.data, **load_options(args))
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


def cmd_study(args: argparse.Namespace) -> int:
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


def cmd_export(args: argparse.Namespace) -> int:
    from cnnlab.tracking import endpoints, export

    for line in export.export_study(
        args.study_dir,
        tensorboard=args.tensorboard,
        mlflow=args.mlflow,
        timeout=endpoints.connect_timeout(args.connect_timeout),
    ):
        print(line)
    return 0
