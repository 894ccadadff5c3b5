"""Commands that train: `cnnlab train`, `evaluate`, `study` and `export` (a study's runs)."""

from __future__ import annotations

import argparse
import os
import sys

from cnnlab.cli.options import load_options, refuse_resizing, run_config

EXIT_DIVERGED = 3  # `cnnlab train`: the loss became NaN or infinite; the run folder is written


# --- one run ----------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    import contextlib
    import time

    from cnnlab.config import DATASET_SHAPES
    from cnnlab.data.datasets import load_dataset
    from cnnlab.nn.architectures import is_module_net
    from cnnlab.nn.module_nets import check_module_net
    from cnnlab.nn.shapes import resolve_layers
    from cnnlab.store import Status
    from cnnlab.training import loop, runfolder
    from cnnlab.training.device import resolve_device
    from cnnlab.training.metrics import epoch_text

    config = run_config(args)
    # Mistakes in the arguments surface before the data is decoded.
    refuse_resizing(args, config.dataset, "a run's config does not record a resize")
    resolve_device(args.device)
    if config.dataset != "images":  # an image folder's shape is known once it is read
        if is_module_net(config):
            check_module_net(config, *DATASET_SHAPES[config.dataset])
        else:
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
                display.console.print(epoch_text(row))
                display.update(task, completed=row["epoch"])
        else:

            def progress(row: dict) -> None:
                print(epoch_text(row), flush=True)

        result = loop.fit(config, data, device=args.device, progress=progress)
    runfolder.save_run(
        result, out, data.class_names, test_images=data.test_images, test_labels=data.test_labels
    )
    metrics = result.metrics
    if result.status == Status.DIVERGED:
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
    from cnnlab.config import Execution
    from cnnlab.store import Status
    from cnnlab.study.runner import StudyRun, summary_lines

    execution = Execution(
        device=args.device,
        workers=args.workers,
        backend=args.backend,
        address=args.address,
        connect_timeout=args.connect_timeout,
    )
    study = StudyRun(
        args.study_file,
        out=args.out,
        data=args.data,
        repeats=args.repeats,
        force=args.force,
        execution=execution,
    )
    if args.dry_run:
        for line in study.describe():
            print(line)
        return 0
    callbacks = _callbacks(args, study.execution)  # before anything is loaded or written
    from cnnlab.pipeline.studies import study_and_report  # the report's stack, only to run

    done = study_and_report(study, callbacks, explain=not args.no_explain)
    for line in summary_lines(done.outcome):
        print(line)
    for line in done.advice:  # too few seeds to tell a difference apart: say how many
        print(f"advice: {line}")
    print(f"report: {done.paths['html']}")
    return 1 if done.outcome.counts.get(Status.FAILED) else 0


def _callbacks(args: argparse.Namespace, execution) -> list:
    """The study's display, then its `--log` loggers; a Ray cluster that does not answer, a
    bad `--log` spec or a missing extra fail here, before anything is written."""
    from cnnlab.tracking import endpoints

    timeout = endpoints.connect_timeout(execution.connect_timeout)
    if execution.backend == "ray":
        address = execution.address
        if address is None:
            address = os.environ.get("RAY_ADDRESS") or None
        endpoints.probe_ray(address, timeout)
    callbacks = [_study_display()]
    if args.log:
        from cnnlab.tracking import export

        def warn(line: str) -> None:
            print(f"cnnlab: warning: {line}", file=sys.stderr)

        callbacks.append(export.open_loggers(args.log, on_error=warn, timeout=timeout))
    return callbacks


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
