"""The datasets' official releases, downloaded once with their SHA-256 checked: what `load`
reads when no data dir is given.

tensorflow-datasets was the default source before, but its builders read the files they
download with TensorFlow (`tf.io.gfile`), which this project does not install: its first
download failed. The releases are the files the readers here already take (CIFAR-10's
binary release, the IDX files), so a download is one more data dir: `downloads/cifar10/`,
`downloads/mnist/`, `downloads/fashion-mnist/` under the cache folder (`$JAXCIFAR_CACHE`,
else ~/.cache/jaxcifar), each folder named so that it names its dataset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from jaxcifar.atomic import atomic_path
from jaxcifar.data.cache import CACHE_ENV, cache_dir
from jaxcifar.errors import DataError

TIMEOUT_SECONDS = 30.0  # per connection attempt and read: offline, a failure comes at once


@dataclasses.dataclass(frozen=True)
class Release:
    """One file of a dataset's official release: where it is, its size and SHA-256 (the
    figures tensorflow-datasets records for the same URLs)."""

    url: str
    size: int
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]


def _idx_release(base: str, sizes_and_digests: dict[str, tuple[int, str]]) -> tuple[Release, ...]:
    return tuple(Release(base + name, size, sha) for name, (size, sha) in sizes_and_digests.items())


RELEASES = {
    "cifar10": (
        Release(
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", 170_052_171,
            "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        ),
    ),  # fmt: skip
    "mnist": _idx_release("https://storage.googleapis.com/cvdf-datasets/mnist/", {
        "train-images-idx3-ubyte.gz":
            (9_912_422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        "train-labels-idx1-ubyte.gz":
            (28_881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        "t10k-images-idx3-ubyte.gz":
            (1_648_877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        "t10k-labels-idx1-ubyte.gz":
            (4_542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    }),  # fmt: skip
    "fashion_mnist": _idx_release("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz":
            (26_421_880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        "train-labels-idx1-ubyte.gz":
            (29_515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        "t10k-images-idx3-ubyte.gz":
            (4_422_102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        "t10k-labels-idx1-ubyte.gz":
            (5_148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    }),  # fmt: skip
}
# Each dataset's folder under downloads/: a name `sources.ALIASES` gives to that dataset
# alone (IDX files do not say whether they are MNIST's or Fashion-MNIST's).
FOLDERS = {"cifar10": "cifar10", "mnist": "mnist", "fashion_mnist": "fashion-mnist"}


def fetch(name: str, offline_help: str) -> Path:
    """The folder holding every file of `name`'s official release, downloading those not
    there yet (each checked against its size and SHA-256, then renamed into place, so a
    file present at its size is whole).

    Raises:
      DataError: the folder cannot be made, a download failed (the message names the URL
        and `offline_help`, what to do instead), or its contents are not the release's.
    """
    folder = cache_dir() / "downloads" / FOLDERS[name]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"cannot make {folder} to download {name} into ({error.strerror or error}): set "
            f"${CACHE_ENV} to a folder that can be written, or {offline_help}"
        ) from None
    try:
        for release in RELEASES[name]:
            target = folder / release.filename
            if target.is_file() and target.stat().st_size == release.size:
                continue
            print(f"downloading {release.url} ({release.size / 1e6:.1f} MB) to {folder}",
                  file=sys.stderr)  # fmt: skip
            _download(release, target, offline_help)
    except BaseException:
        with contextlib.suppress(OSError):  # where nothing came: no empty folder is left
            folder.rmdir()
            folder.parent.rmdir()
        raise
    return folder


def _download(release: Release, target: Path, offline_help: str) -> None:
    """`release` into `target`, whole and checked, or nothing (DataError). A failure to
    write (a full disk) stays an OSError naming `target`."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    bar = tqdm(total=release.size, unit="B", unit_scale=True, leave=False,
               disable=not sys.stderr.isatty(), file=sys.stderr)  # fmt: skip
    with atomic_path(target) as tmp, open(tmp, "wb") as out, bar:
        with _network_errors(release, offline_help):
            # urllib honours the proxy variables (https_proxy, ...).
            response = urllib.request.urlopen(release.url, timeout=TIMEOUT_SECONDS)
        with response:
            while True:
                with _network_errors(release, offline_help):
                    chunk = response.read(1 << 20)
                if not chunk:
                    break
                digest.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
        size = out.tell()
        if (size, digest.hexdigest()) != (release.size, release.sha256):
            raise DataError(
                f"{release.url}: downloaded {size:,} bytes of SHA-256 {digest.hexdigest()}, "
                f"expected {release.size:,} bytes of {release.sha256} (a proxy's error "
                "page, or the file changed); nothing was kept"
            )


@contextlib.contextmanager
def _network_errors(release: Release, offline_help: str) -> Iterator[None]:
    """Within it, a failure to fetch `release` (no network, an HTTP error status, a
    connection reset or cut mid-file, TLS) is a DataError naming its URL and the way out."""
    try:
        yield
    # http.client's IncompleteRead (a connection cut mid-file) is not an OSError.
    except (OSError, http.client.HTTPException) as error:
        if isinstance(error, urllib.error.HTTPError):
            reason = f"HTTP {error.code} {error.reason}"
        else:
            reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
        raise DataError(
            f"could not download {release.url} ({reason}). Where it cannot be downloaded, "
            f"{offline_help}"
        ) from None
