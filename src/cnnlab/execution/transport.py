"""What crosses a process: a run's weights as arrays, a dataset's memory maps by file name."""

from __future__ import annotations

import dataclasses
import mmap

import numpy as np
import torch

from cnnlab.data.datasets import Dataset
from cnnlab.training.metrics import RunResult


def weights_as_arrays(result: RunResult) -> RunResult:
    """`result` with its weights as NumPy arrays: they travel by value between processes."""
    weights = {name: tensor.detach().cpu().numpy() for name, tensor in result.state_dict.items()}
    return dataclasses.replace(result, state_dict=weights)


def weights_as_tensors(result: RunResult) -> RunResult:
    """The inverse of `weights_as_arrays`."""
    weights = {
        # Arrays from Ray's object store are read-only; a run's weights are small to copy.
        name: torch.from_numpy(array if array.flags.writeable else array.copy())
        for name, array in result.state_dict.items()
    }
    return dataclasses.replace(result, state_dict=weights)


@dataclasses.dataclass(frozen=True)
class MappedArray:
    """A read-only memory-mapped array, by file name, so a worker maps the same pages."""

    filename: str
    offset: int
    shape: tuple[int, ...]
    dtype: str
    fortran_order: bool


def portable(data: Dataset) -> Dataset:
    """`data` with its whole-file memory maps replaced by their file names."""
    fields = {}
    for field in dataclasses.fields(data):
        value = getattr(data, field.name)
        # A view of a memmap keeps its parent's offset, so only whole maps travel by name.
        if isinstance(value, np.memmap) and isinstance(value.base, mmap.mmap) and value.filename:
            value = MappedArray(
                value.filename,
                value.offset,
                value.shape,
                value.dtype.str,
                bool(value.flags.f_contiguous and not value.flags.c_contiguous),
            )
        fields[field.name] = value
    return dataclasses.replace(data, **fields)


def rebuild(data: Dataset) -> Dataset:
    fields = {}
    for field in dataclasses.fields(data):
        value = getattr(data, field.name)
        if isinstance(value, MappedArray):
            value = np.memmap(
                value.filename,
                dtype=np.dtype(value.dtype),
                mode="r",
                offset=value.offset,
                shape=value.shape,
                order="F" if value.fortran_order else "C",
            )
        fields[field.name] = value
    return dataclasses.replace(data, **fields)
