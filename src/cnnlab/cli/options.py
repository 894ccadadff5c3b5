"""The flags read back into what the library takes: a RunConfig, the image-loading options."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    from cnnlab.config import RunConfig


def run_config(args: argparse.Namespace) -> RunConfig:
    """The RunConfig the run-field flags describe, checked; a bad value names its flag."""
    from cnnlab import config

    given = {name: getattr(args, name) for name in config.SETTABLE}
    run = config.RunConfig(**{name: value for name, value in given.items() if value is not None})
    try:
        config.check_config(run)
    except config.ConfigError as error:
        flag = "--" + error.key.replace("_", "-")
        raise CnnlabError(f"{flag} {getattr(run, error.key)}: {error.reason}") from None
    return with_arch_fields(run, getattr(args, "arch_field", []))


def with_arch_fields(run: RunConfig, pairs: list[str]) -> RunConfig:
    """`run` with `--arch-field NAME=VALUE`s (a module net's) and its package, checked."""
    import dataclasses

    from cnnlab.config import ConfigError
    from cnnlab.nn import architectures

    if not architectures.is_module_net(run):
        if pairs:
            raise CnnlabError(f"--arch-field: {run.arch} takes none (only a module net does)")
        return run
    fields = dict(_name_and_value(pair) for pair in pairs)
    package = architectures.module_architecture(run.arch).package
    run = dataclasses.replace(run, arch_fields=fields or None, arch_package=package)
    try:
        return dataclasses.replace(run, arch_fields=architectures.canonical_fields(run))
    except ConfigError as error:
        raise CnnlabError(f"--arch-field {error.key}: {error.reason}") from None


def _name_and_value(pair: str) -> tuple[str, object]:
    """'width=32' -> ('width', 32): the value as TOML reads it, else the text itself."""
    import tomllib

    name, equals, text = pair.partition("=")
    if not equals or not name.strip():
        raise CnnlabError(f"--arch-field {pair!r}: expected NAME=VALUE, e.g. width=32")
    try:
        value = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        value = text
    return name.strip(), value


def load_options(args: argparse.Namespace) -> dict:
    """How to load image folders of mixed sizes: `--image-size` and `--resample`."""
    if getattr(args, "image_size", None) is None:
        if getattr(args, "resample", None) is not None:
            raise CnnlabError("--resample only applies with --image-size (it says how to resize)")
        return {}
    return {"image_size": args.image_size, "resample": args.resample or "bilinear"}


def refuse_resizing(args: argparse.Namespace, dataset: str, why: str) -> None:
    """--image-size on a dataset of fixed-size images, where the command cannot apply it:
    one line saying `why`, not a resize silently dropped or left unrecorded."""
    from cnnlab import config

    size = getattr(args, "image_size", None)
    fixed = config.DATASET_SHAPES.get(dataset)
    if size is None or fixed is None:
        return
    shown = "x".join(map(str, size)) if isinstance(size, tuple) else str(size)
    height, width, _ = fixed[0]
    raise CnnlabError(
        f"--image-size {shown}: {dataset} images are all {height}x{width} and {why};"
        " --image-size resizes an image-folder dataset (--dataset images)"
    )
