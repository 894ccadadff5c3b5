"""The named datasets: their names and variables, official files, verification, fetching.

`fetch_official` downloads a dataset's official archive or files (trying mirrors in order) into
the cache, verified by md5 and, where one is published, sha256, and written atomically: a bad
or interrupted download leaves nothing behind. `cache_dir` is the user cache every reader shares.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cnnlab.atomic import atomic_path
from cnnlab.data.sources import shown
from cnnlab.errors import CnnlabError

DESCRIPTIONS: dict[str, str] = {
    "cifar10": "CIFAR-10: 32x32 RGB, 10 classes (official python/binary archives or image folders)",
    "cifar100": "CIFAR-100: 32x32 RGB, 100 fine classes (official python/binary archives)",
    "cifar100-coarse": "CIFAR-100 with its 20 coarse classes (superclasses) as labels",
    "mnist": "MNIST: 28x28 grayscale digits, 10 classes (four official IDX files or image folders)",
    "fashion-mnist": "Fashion-MNIST: 28x28 grayscale clothes, 10 classes (four official IDX files)",
    "digits": "scikit-learn's bundled 8x8 digits, 10 classes (offline; fixed 4:1 split)",
    "images": "image folders train/<class>/* and test/<class>/*, any classes and sizes",
}
DATASETS: tuple[str, ...] = tuple(DESCRIPTIONS)
# The environment variable each dataset reads when no `data` path is given.
ENVIRONMENT: dict[str, str] = {
    "cifar10": "CNNLAB_DATA",
    "cifar100": "CNNLAB_DATA_CIFAR100",
    "cifar100-coarse": "CNNLAB_DATA_CIFAR100",
    "mnist": "CNNLAB_DATA_MNIST",
    "fashion-mnist": "CNNLAB_DATA_FASHION_MNIST",
    "images": "CNNLAB_DATA_IMAGES",
}


_HASH_CHUNK_BYTES = 1 << 20


def check_name(name: str) -> None:
    if name not in DESCRIPTIONS:
        raise CnnlabError(f"unknown dataset {shown(name)!r} (known: {', '.join(DATASETS)})")


def local_copy_hint(name: str) -> str:
    variable = ENVIRONMENT.get(name, "CNNLAB_DATA")
    return f"point cnnlab at a local copy with --data PATH or {variable}=PATH"


def file_digests(path: Path) -> dict[str, str]:
    """md5 and sha256 of a file, read once."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK_BYTES):
            md5.update(chunk)
            sha256.update(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def cache_dir() -> Path:
    """The user cache: $CNNLAB_CACHE, else ~/.cache/cnnlab."""
    return Path(os.environ.get("CNNLAB_CACHE") or "~/.cache/cnnlab").expanduser()


@dataclass(frozen=True)
class OfficialFile:
    """One file of an official distribution: where it comes from and how it is verified."""

    dataset: str  # the `fetch_official` dataset it belongs to
    name: str  # its official file name
    urls: tuple[str, ...]  # tried in order (mirrors)
    md5: str
    sha256: str | None = None  # None where no sha256 is published alongside the md5
    folder: str = ""  # where it goes under the fetch destination ("" for the archives)
    fetched: bool = True  # False: a known official form that `fetch_official` does not download


_TORONTO = "https://www.cs.toronto.edu/~kriz/"
_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_FASHION_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# md5s as published by the datasets' authors (and in torchvision's tables); sha256s where two or
# more independent public tables agree (Fashion-MNIST's are checked by md5 only).
OFFICIAL_FILES: tuple[OfficialFile, ...] = (
    OfficialFile(
        "cifar10",
        "cifar-10-python.tar.gz",
        (_TORONTO + "cifar-10-python.tar.gz",),
        "c58f30108f718f92721af3b95e74349a",
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    ),
    OfficialFile(
        "cifar10",
        "cifar-10-binary.tar.gz",
        (_TORONTO + "cifar-10-binary.tar.gz",),
        "c32a1d4ab5d03f1284b67883e8d87530",
        fetched=False,
    ),
    OfficialFile(
        "cifar100",
        "cifar-100-python.tar.gz",
        (_TORONTO + "cifar-100-python.tar.gz",),
        "eb9058c3a382ffc7106e4002c42a8d85",
        "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
    ),
    OfficialFile(
        "cifar100",
        "cifar-100-binary.tar.gz",
        (_TORONTO + "cifar-100-binary.tar.gz",),
        "03b5dce01913d631647c71ecec9e9cb8",
        fetched=False,
    ),
    *(
        OfficialFile("mnist", name, tuple(m + name for m in _MNIST_MIRRORS), md5, sha256, "mnist")
        for name, md5, sha256 in zip(
            _IDX_NAMES,
            (
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
            (
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ),
            strict=True,
        )
    ),
    *(
        OfficialFile("fashion-mnist", name, (_FASHION_MIRROR + name,), md5, None, "fashion-mnist")
        for name, md5 in zip(
            _IDX_NAMES,
            (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
            strict=True,
        )
    ),
)
# The official files each dataset name downloads (cifar100-coarse shares cifar100's archive).
FETCH_AS = {"cifar100-coarse": "cifar100"}


def _official(dataset: str) -> list[OfficialFile]:
    return [file for file in OFFICIAL_FILES if file.dataset == dataset and file.fetched]


def _fetch_target(files: Sequence[OfficialFile], dest: Path) -> Path:
    """What `fetch_official` hands back: the one archive, or the folder holding the files."""
    if len(files) == 1 and not files[0].folder:
        return dest / files[0].name
    return dest / files[0].folder


def fetched_source(dataset: str, dest: Path) -> Path | None:
    """The official files `fetch_official` left in `dest`, if all are there."""
    files = _official(dataset)
    target = _fetch_target(files, dest)
    if all((dest / file.folder / file.name).is_file() for file in files):
        return target.resolve()
    return None


def fetch_official(
    dest: str | os.PathLike[str] | None = None,
    *,
    dataset: str = "cifar10",
    url: str | None = None,
    md5: str | None = None,
    sha256: str | None = None,
    files: Sequence[OfficialFile] | None = None,
    opener: Callable[..., Any] | None = None,
) -> Path:
    """Download the official files of `dataset` into `dest` (default: the cache), verified.

    Returns what `load_dataset` reads: the archive (CIFAR) or the folder of IDX files (MNIST).
    Each download goes to a temporary file that is renamed only when its checksums match; a file
    already there with the right checksums is kept without downloading. `url`, `md5` and
    `sha256` replace the one official archive's (for tests and private mirrors); `files`
    replaces the whole list.
    """
    check_name(dataset)
    if dataset in ("digits", "images"):
        raise CnnlabError(f"{dataset} has no official files to fetch (known: {_fetchable()})")
    official = list(files) if files is not None else _official(FETCH_AS.get(dataset, dataset))
    if url is not None or md5 is not None or sha256 is not None:
        assert len(official) == 1, "url/md5/sha256 replace a single archive's; use files="
        (only,) = official
        official = [
            replace(
                only,
                urls=(url,) if url is not None else only.urls,
                md5=md5 if md5 is not None else only.md5,
                sha256=sha256 if sha256 is not None else only.sha256,
            )
        ]
    root = Path(dest if dest is not None else cache_dir()).expanduser()
    for file in official:
        _fetch_one(file, root / file.folder / file.name, dataset, opener)
    return _fetch_target(official, root).resolve()


def _fetchable() -> str:
    return ", ".join(sorted({file.dataset for file in OFFICIAL_FILES if file.fetched}))


def _fetch_one(file: OfficialFile, target: Path, dataset: str, opener: Callable[..., Any] | None):
    """One official file into `target`, verified; the first mirror that answers is used."""
    expected = {"md5": file.md5, "sha256": file.sha256}
    if target.is_file() and _matches(file_digests(target), expected):
        return
    open_url = opener if opener is not None else urllib.request.urlopen
    failures = []
    for url in file.urls:
        try:
            response = open_url(url, timeout=30)
        except (urllib.error.URLError, OSError) as error:
            failures.append(f"{url} (no network? {getattr(error, 'reason', error)})")
            continue
        with atomic_path(target) as tmp:
            got = _download(response, tmp, url, file.name)
            if not _matches(got, expected):
                wanted = f"md5 {file.md5}" + (f", sha256 {file.sha256}" if file.sha256 else "")
                raise CnnlabError(
                    f"{url}: checksum mismatch (md5 {got['md5']}, sha256 {got['sha256']}; "
                    f"expected {wanted}); nothing was kept"
                )
        return
    raise CnnlabError(f"cannot download {'; '.join(failures)}; {local_copy_hint(dataset)}")


def _matches(got: dict[str, str], expected: dict[str, str | None]) -> bool:
    return all(value is None or got[kind] == value for kind, value in expected.items())


def _download(response: Any, tmp: Path, url: str, label: str) -> dict[str, str]:
    """Copy `response` into `tmp` with a progress bar on stderr; the md5 and sha256 of what came."""
    from rich.console import Console
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
    try:
        with (
            response,
            tmp.open("wb") as stream,
            Progress(
                *Progress.get_default_columns(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=Console(stderr=True),  # stdout is for results
            ) as progress,
        ):
            task = progress.add_task(label, total=int(length) if length else None)
            while chunk := response.read(_HASH_CHUNK_BYTES):
                stream.write(chunk)
                md5.update(chunk)
                sha256.update(chunk)
                progress.update(task, advance=len(chunk))
    except OSError as error:
        raise CnnlabError(f"{url}: download interrupted ({error}); nothing was kept") from None
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}
