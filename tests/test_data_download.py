"""The default source: each dataset's official release, downloaded once and checked. The
releases are served from small files in their exact formats through file:// URLs."""

import dataclasses
import hashlib
import http.client
import io
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest

from data_files import binary_batch, make_batches, write_idx_set, write_release
from jaxcifar.data import download, load
from jaxcifar.errors import DataError


@pytest.fixture
def no_data_dir(monkeypatch, fresh_cache):
    monkeypatch.delenv("JAXCIFAR_DATA_DIR", raising=False)
    return fresh_cache


def serve(monkeypatch, name, files):
    """Point `name`'s release at `files` (paths, by the release's file names) as file:// URLs."""
    releases = []
    for release in download.RELEASES[name]:
        data = files[release.filename].read_bytes()
        url = files[release.filename].as_uri()
        releases.append(download.Release(url, len(data), hashlib.sha256(data).hexdigest()))
    monkeypatch.setitem(download.RELEASES, name, tuple(releases))


def test_official_file_names_are_what_the_readers_take():
    assert [r.filename for r in download.RELEASES["cifar10"]] == ["cifar-10-binary.tar.gz"]
    for name in ("mnist", "fashion_mnist"):
        assert sorted(r.filename for r in download.RELEASES[name]) == sorted(
            f"{prefix}-{kind}-ubyte.gz"
            for prefix in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")
        )
    assert all(r.url.startswith(("https://", "http://")) and len(r.sha256) == 64
               for releases in download.RELEASES.values() for r in releases)  # fmt: skip


def test_fashion_mnist_is_downloaded_once_into_a_folder_that_names_it(
    no_data_dir, tmp_path, monkeypatch, capsys
):
    written = write_idx_set(tmp_path / "release", shape=(28, 28))
    serve(monkeypatch, "fashion_mnist", {p.name: p for p in (tmp_path / "release").iterdir()})
    data = load("fashion_mnist", "train")
    np.testing.assert_array_equal(data.images[..., 0], written["train"][0])
    assert data.class_names[0] == "T-shirt/top"  # read as Fashion-MNIST, not as MNIST
    assert data.source == str(no_data_dir / "downloads" / "fashion-mnist")
    assert capsys.readouterr().err.count("downloading file://") == 4
    # Downloaded files are kept: the other split, and a fresh decode, download nothing.
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded"))
    for entry in no_data_dir.glob("*.npz"):
        entry.unlink()
    assert len(load("fashion_mnist", "test")) == 4


def test_over_http_a_release_downloads_and_a_missing_file_is_an_http_error(
    no_data_dir, tmp_path, monkeypatch
):
    # A real HTTP server on this machine: status lines, headers and chunked reads as a host
    # sends them (file:// URLs skip all of that).
    import functools
    import http.server
    import threading

    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    written = write_idx_set(tmp_path / "release")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(tmp_path / "release"))  # fmt: skip
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        files = {p.name: p for p in (tmp_path / "release").iterdir()}
        serve(monkeypatch, "mnist", files)
        monkeypatch.setitem(download.RELEASES, "mnist", tuple(
            dataclasses.replace(r, url=base + r.filename) for r in download.RELEASES["mnist"]
        ))  # fmt: skip
        np.testing.assert_array_equal(load("mnist", "test").labels, written["test"][1])
        missing = dataclasses.replace(download.RELEASES["mnist"][0], url=base + "moved.gz")
        monkeypatch.setitem(download.RELEASES, "fashion_mnist", (missing,))
        with pytest.raises(DataError, match=rf"could not download {base}moved\.gz \(HTTP 404 "):
            load("fashion_mnist", "train")
    finally:
        server.shutdown()
        server.server_close()


def test_cifar10_binary_release_downloads_and_loads(no_data_dir, tmp_path, monkeypatch):
    batches = make_batches()
    write_release(tmp_path / "cifar-10-batches-bin", batches, binary_batch, suffix=".bin")
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    serve(monkeypatch, "cifar10", {archive.name: archive})
    test = load("cifar10", "test")
    np.testing.assert_array_equal(test.images, batches["test_batch"][0])


def test_a_download_of_other_contents_is_refused_and_not_kept(no_data_dir, tmp_path, monkeypatch):
    write_idx_set(tmp_path / "release")
    files = {p.name: p for p in (tmp_path / "release").iterdir()}
    serve(monkeypatch, "mnist", files)
    first = download.RELEASES["mnist"][0]
    files[first.filename].write_bytes(b"<html>a proxy's error page</html>")
    with pytest.raises(DataError) as error:
        load("mnist", "train")
    assert str(error.value).startswith(f"{first.url}: downloaded 33 bytes of SHA-256 ")
    assert "(a proxy's error page, or the file changed); nothing was kept" in str(error.value)
    assert list(no_data_dir.iterdir()) == []  # nor an empty downloads/mnist/


def test_no_network_names_the_url_and_the_local_options(no_data_dir, monkeypatch):
    def offline(url, timeout):
        assert timeout == download.TIMEOUT_SECONDS
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as error:
        load("cifar10", "train")
    message = str(error.value)
    assert message.startswith(
        "could not download https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz ([Errno -2] "
        "Name or service not known). Where it cannot be downloaded, pass --data-dir or set "
        "$JAXCIFAR_DATA_DIR to"
    )
    assert "cifar-10-python.tar.gz" in message and "train/<class>" in message
    assert list(no_data_dir.iterdir()) == []  # it left an empty downloads/cifar10/


@pytest.mark.parametrize(
    "failure, reason",
    [
        (http.client.IncompleteRead(b"partial", 1000), "IncompleteRead"),  # not an OSError
        (ConnectionResetError(104, "Connection reset by peer"), "(Connection reset by peer)"),
        (urllib.error.HTTPError("u", 404, "Not Found", {}, None), "(HTTP 404 Not Found)"),
    ],
)
def test_a_failed_read_names_the_url_and_keeps_nothing(no_data_dir, monkeypatch, failure, reason):
    class FailingResponse(io.BytesIO):
        def read(self, size=-1):
            raise failure

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: FailingResponse())
    with pytest.raises(DataError) as error:
        load("mnist", "train")
    message = str(error.value)
    assert message.startswith("could not download https://storage.googleapis.com/cvdf-datasets/")
    assert reason in message and str(no_data_dir) not in message  # the URL's fault, not a file's
    assert list(no_data_dir.iterdir()) == []  # nor an empty downloads/mnist/


def test_a_file_cut_short_is_downloaded_again(no_data_dir, tmp_path, monkeypatch, capsys):
    write_idx_set(tmp_path / "release")
    serve(monkeypatch, "mnist", {p.name: p for p in (tmp_path / "release").iterdir()})
    load("mnist", "train")
    capsys.readouterr()
    kept = no_data_dir / "downloads" / "mnist" / "train-labels-idx1-ubyte.gz"
    kept.write_bytes(kept.read_bytes()[:-1])  # a download never leaves this; a copy might
    for entry in no_data_dir.glob("*.npz"):
        entry.unlink()
    assert len(load("mnist", "train")) == 6
    assert capsys.readouterr().err.count("downloading ") == 1


def test_a_download_folder_that_cannot_be_made_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXCIFAR_DATA_DIR", raising=False)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("JAXCIFAR_CACHE", str(tmp_path / "file"))
    with pytest.raises(DataError) as error:
        load("mnist", "train")
    assert str(error.value).startswith(
        f"cannot make {tmp_path / 'file' / 'downloads' / 'mnist'} to download mnist into (Not a "
        "directory): set $JAXCIFAR_CACHE to a folder that can be written, or pass --data-dir"
    )


def test_importing_the_package_imports_no_tensorflow():
    # (Nor tensorflow_datasets, which starts so: it is installed where this suite has run.)
    code = ("import sys, jaxcifar.data, jaxcifar.cli; "
            "print(any(m.startswith('tensorflow') for m in sys.modules))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)  # fmt: skip
    assert result.stdout.strip() == "False"


def test_a_download_of_the_right_size_but_other_contents_is_refused(
    no_data_dir, tmp_path, monkeypatch
):
    # A size check alone passes a corrupted or substituted file of the release's size.
    write_idx_set(tmp_path / "release")
    files = {p.name: p for p in (tmp_path / "release").iterdir()}
    serve(monkeypatch, "mnist", files)
    first = download.RELEASES["mnist"][0]
    data = files[first.filename].read_bytes()
    files[first.filename].write_bytes(bytes([data[0] ^ 1]) + data[1:])
    with pytest.raises(DataError) as error:
        load("mnist", "train")
    assert str(error.value).startswith(f"{first.url}: downloaded {len(data):,} bytes of SHA-256 ")
    assert list(no_data_dir.iterdir()) == []  # nor an empty downloads/mnist/
