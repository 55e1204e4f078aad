"""The code package: the working directory as a gzipped tar, shipped with a job that runs in
containers (a Kubernetes ConfigMap, or object storage for Kubernetes and the cloud services).

The same files as a Slurm snapshot (:mod:`corral.snapshot`: git's view of the tree, or
everything but caches and virtual environments). The package is for code, not data: one over
its limit is refused, saying what to leave out.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence

from corral.errors import SubmitError
from corral.snapshot import snapshot_files
from corral.store import corral_home


def upload(data: bytes, url: str) -> None:
    """The package into object storage (fsspec: s3://, gs://, az://, file://...)."""
    from corral.errors import MissingDependency

    try:
        import fsspec
    except ImportError as exc:
        raise MissingDependency("fsspec", purpose="for -o package_store") from exc
    try:
        with fsspec.open(url, "wb", auto_mkdir=True) as handle:
            handle.write(data)
    except Exception as exc:  # each filesystem has its own errors: say which and where
        raise SubmitError(f"package_store: cannot write the code package to {url}: "
                          f"{type(exc).__name__}: {exc}") from None


def pack(workdir: str, *, exclude: Sequence[str] = (), max_kb: float = 900,
         where: str = "a ConfigMap can carry") -> tuple[bytes, list[tuple[str, str]]]:
    """(the package, files left out with why). Same bytes for the same files."""
    snap = snapshot_files(workdir, leave_out=[str(corral_home())], exclude=exclude)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as archive:
        for name in snap.files:
            with open(os.path.join(workdir, name), "rb") as handle:  # a link: its target
                info = archive.gettarinfo(arcname=name, fileobj=handle)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0  # reproducible: the package depends on the contents only
                archive.addfile(info, handle)
    data = buffer.getvalue()
    if len(data) > max_kb * 1024:
        sizes = sorted(snap.files, key=lambda f: os.path.getsize(os.path.join(workdir, f)))
        raise SubmitError(
            f"the code package of {workdir} is {len(data) // 1024} KiB compressed "
            f"({len(snap.files)} files, {snap.size // 1024} KiB), over the limit of "
            f"{max_kb:g} KiB that {where} (largest: {', '.join(sizes[-3:])}); leave data and "
            "outputs out with .gitignore or -o package_exclude='data/*', ship it through "
            "object storage with -o package_store=s3://BUCKET/PREFIX, or build the code into "
            "the image and use -o code=image")
    return data, list(snap.skipped)


def remove(urls: Sequence[str]) -> None:
    """What a failed submission uploaded (best effort: it is only a copy of the code); a URL
    that cannot be removed is named in a warning, and the submission's own error follows."""
    if not urls:
        return
    try:
        import fsspec

        for url in urls:
            fs, path = fsspec.core.url_to_fs(url)
            fs.rm(path)
    except Exception as exc:  # each filesystem has its own errors
        import sys

        sys.stderr.write(f"corral: warning: could not remove {', '.join(urls)}: {exc}\n")
