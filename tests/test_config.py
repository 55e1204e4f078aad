"""corral.toml discovery: where the search stops, which file wins, which files are refused."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from corral import config
from corral.config import backend_defaults, find_config, load_config
from corral.errors import JobFileError

SLURM = '[slurm]\npartition = "gpu"\n'


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with no config around it: HOME elsewhere, no CORRAL_CONFIG, a .git at its root."""
    monkeypatch.delenv("CORRAL_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = tmp_path / "tree"
    root.mkdir()
    return root


def write(path: Path, text: str | bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def chdir(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(folder)


# --- discovery ------------------------------------------------------------------------


def test_nearest_file_wins_and_corral_toml_beats_pyproject(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tree / ".git").mkdir()
    write(tree / "corral.toml", '[slurm]\nqos = "root"\n')
    write(tree / "sub" / "pyproject.toml", '[tool.corral.slurm]\nqos = "sub"\n')
    chdir(monkeypatch, tree / "sub" / "deeper")
    assert find_config() == tree / "sub" / "pyproject.toml"
    assert backend_defaults("slurm") == {"qos": "sub"}
    write(tree / "sub" / "corral.toml", '[slurm]\nqos = "sub-corral"\n')
    assert find_config() == tree / "sub" / "corral.toml"
    assert backend_defaults("slurm") == {"qos": "sub-corral"}
    assert backend_defaults("local") == {}
    assert find_config(start=tree) == tree / "corral.toml"


def test_pyproject_without_a_corral_table_is_passed_over(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tree / ".git").mkdir()
    write(tree / "corral.toml", SLURM)
    write(tree / "a" / "pyproject.toml", '[project]\nname = "x"\ndependencies = ["corral"]\n')
    write(tree / "a" / "b" / "pyproject.toml", "this is [not toml\n")  # not about corral
    chdir(monkeypatch, tree / "a" / "b")
    assert find_config() == tree / "corral.toml"


@pytest.mark.parametrize("git", ["directory", "file"])
def test_search_stops_at_the_git_root(tree: Path, monkeypatch: pytest.MonkeyPatch,
                                      git: str) -> None:
    write(tree / "corral.toml", SLURM)  # above the work tree: never read
    repo = tree / "repo"
    if git == "directory":
        (repo / ".git").mkdir(parents=True)
    else:  # a worktree or submodule
        write(repo / ".git", "gitdir: /elsewhere/.git/worktrees/repo\n")
    chdir(monkeypatch, repo / "src" / "pkg")
    assert find_config() is None
    assert backend_defaults("slurm") == {}
    write(repo / "corral.toml", '[slurm]\nqos = "repo"\n')  # the root's own file counts
    assert find_config() == repo / "corral.toml"
    assert backend_defaults("slurm") == {"qos": "repo"}


def test_search_stops_at_home(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tree / "corral.toml", SLURM)  # above HOME: never read
    home = tree / "alice"
    monkeypatch.setenv("HOME", str(home))
    chdir(monkeypatch, home / "work" / "proj")
    assert find_config() is None
    write(home / "corral.toml", '[slurm]\nqos = "home"\n')  # HOME's own file counts
    assert find_config() == home / "corral.toml"
    assert backend_defaults("slurm") == {"qos": "home"}


def test_search_stops_at_a_filesystem_boundary(tree: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    write(tree / "corral.toml", SLURM)  # on another filesystem than the start: never read
    mount = tree / "mnt"
    chdir(monkeypatch, mount / "proj")
    real_device = config._device

    def device(folder: Path) -> int:  # `mnt` is a mount point of its own filesystem
        return -1 if folder == mount or mount in folder.parents else real_device(folder)

    monkeypatch.setattr(config, "_device", device)
    assert find_config() is None
    write(mount / "corral.toml", '[slurm]\nqos = "mnt"\n')
    assert find_config() == mount / "corral.toml"


def test_corral_config_names_the_file_explicitly(tree: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tree / ".git").mkdir()
    write(tree / "corral.toml", SLURM)
    chdir(monkeypatch, tree)
    explicit = write(tmp_path / "elsewhere" / "site.toml", '[slurm]\naccount = "ml"\n')
    monkeypatch.setenv("CORRAL_CONFIG", str(explicit))
    assert find_config() == explicit
    assert backend_defaults("slurm") == {"account": "ml"}
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv("CORRAL_CONFIG", str(missing))
    expected = re.escape(f"CORRAL_CONFIG names '{missing}', which does not exist")
    with pytest.raises(JobFileError, match=expected):
        backend_defaults("slurm")
    with pytest.raises(JobFileError, match="does not exist"):
        load_config(missing)


# --- refusals: who may write the file -------------------------------------------------


def test_file_owned_by_another_user_is_refused(tree: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tree / "corral.toml", SLURM)
    os.chown(path, 12345, -1)
    chdir(monkeypatch, tree)
    with pytest.raises(JobFileError) as caught:
        backend_defaults("slurm")
    message = str(caught.value)
    assert str(path) in message
    assert "owned by uid 12345" in message
    assert "not by you" in message and "or root" in message
    # the same file is fine for its owner; a root-owned file is fine for anyone
    monkeypatch.setattr(config.os, "geteuid", lambda: 12345)
    assert backend_defaults("slurm") == {"partition": "gpu"}
    os.chown(path, 0, -1)
    assert backend_defaults("slurm") == {"partition": "gpu"}


@pytest.mark.parametrize(("mode", "who"), [(0o664, "group"), (0o646, "others"),
                                           (0o666, "group and others")],
                         ids=["group", "others", "both"])
def test_file_writable_by_group_or_others_is_refused(tree: Path, monkeypatch: pytest.MonkeyPatch,
                                                     mode: int, who: str) -> None:
    path = write(tree / "sub" / "pyproject.toml", "[tool.corral.slurm]\nqos = 'x'\n", mode)
    chdir(monkeypatch, tree / "sub")
    with pytest.raises(JobFileError) as caught:
        backend_defaults("slurm")
    message = str(caught.value)
    assert f"is writable by {who} (mode {mode:04o})" in message
    assert f"chmod go-w {path}" in message
    path.chmod(0o644)
    assert backend_defaults("slurm") == {"qos": "x"}


def test_explicit_file_is_checked_too(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tree / "site.toml", SLURM, 0o666)
    monkeypatch.setenv("CORRAL_CONFIG", str(path))
    with pytest.raises(JobFileError, match=r"chmod go-w .*site\.toml"):
        backend_defaults("slurm")


# --- malformed files: a corral error naming the file, never a traceback ---------------


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("pyproject.toml", '[tool]\ncorral = "x"\n', r"\[tool\.corral\] must be a table"),
        ("pyproject.toml", "[tool.corral]\nslurm = 3\n",
         r"\[tool\.corral\.slurm\] must be a table of options for the 'slurm' backend, got "
         r"a int \(3\)"),
        ("pyproject.toml", '[tool.corral.slurm]\nqos = "x"\n[tool.corral.slurm\n',
         "is not valid TOML"),
        ("corral.toml", 'slurm = "gpu"\n', r"\[slurm\] must be a table"),
        ("corral.toml", 'partition = "gpu"\n[slurm]\n', r"\[partition\] must be a table"),
        ("corral.toml", "[slurm\npartition = 'gpu'\n", r"is not valid TOML: .*line 1"),
        ("corral.toml", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", r"is not UTF-8 text \(byte 0x89"),
        ("corral.toml", b"[slurm]\x00\x01", "is not valid TOML"),
    ],
    ids=["tool-corral-is-a-string", "backend-is-an-int", "pyproject-syntax", "backend-is-a-string",
         "key-outside-a-table", "corral-toml-syntax", "binary", "control-characters"],
)
def test_malformed_file_is_a_corral_error(tree: Path, monkeypatch: pytest.MonkeyPatch,
                                          name: str, content: str | bytes,
                                          expected: str) -> None:
    (tree / ".git").mkdir()
    path = write(tree / name, content)
    chdir(monkeypatch, tree / "sub")
    with pytest.raises(JobFileError, match=expected) as caught:
        backend_defaults("slurm")
    assert str(path) in str(caught.value)


def test_pyproject_whose_tool_is_not_a_table(tree: Path) -> None:
    path = write(tree / "pyproject.toml", 'tool = "x"\n')
    with pytest.raises(JobFileError, match=r"'tool' must be a table, got a str \('x'\)"):
        load_config(path)


def test_directory_named_corral_toml_is_reported_not_skipped(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tree / ".git").mkdir()
    write(tree / "corral.toml", SLURM)
    (tree / "sub" / "corral.toml").mkdir(parents=True)
    chdir(monkeypatch, tree / "sub")
    with pytest.raises(JobFileError, match=r"corral\.toml' is a directory, not a file"):
        backend_defaults("slurm")


def test_broken_and_looping_symlinks(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tree / ".git").mkdir()
    link = tree / "corral.toml"
    link.symlink_to(tree / "gone.toml")
    chdir(monkeypatch, tree)
    with pytest.raises(JobFileError, match=r"does not exist \(a symlink to a missing file\)"):
        backend_defaults("slurm")
    link.unlink()
    link.symlink_to(link)
    with pytest.raises(JobFileError, match=re.escape(f"'{link}' cannot be opened")):
        backend_defaults("slurm")


def test_symlink_to_a_trusted_file_is_followed(tree: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tree / ".git").mkdir()
    target = write(tree / "shared" / "site.toml", SLURM)
    (tree / "corral.toml").symlink_to(target)
    chdir(monkeypatch, tree)
    assert backend_defaults("slurm") == {"partition": "gpu"}


def test_fifo_is_refused_without_hanging(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tree / ".git").mkdir()
    os.mkfifo(tree / "corral.toml")
    chdir(monkeypatch, tree)
    with pytest.raises(JobFileError, match=r"is not a regular file \(it is a FIFO\)"):
        backend_defaults("slurm")


def test_unreadable_file(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tree / ".git").mkdir()
    path = write(tree / "corral.toml", SLURM, 0o600)
    chdir(monkeypatch, tree)
    real_open = os.open

    def open_as_a_stranger(target: object, flags: int, *args: int, **kwargs: int) -> int:
        # root reads any file, so simulate what another user would meet
        if Path(str(target)) == path:
            raise PermissionError(13, "Permission denied", str(target))
        return real_open(target, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(config.os, "open", open_as_a_stranger)
    expected = re.escape(f"'{path}' cannot be opened: Permission denied")
    with pytest.raises(JobFileError, match=expected):
        backend_defaults("slurm")


def test_the_python_api_reads_the_same_config_as_the_cli(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    from corral.api import _backend

    (tmp_path / ".git").mkdir()
    config = tmp_path / "corral.toml"
    config.write_text('[slurm]\npartition = "gpu"\naccount = "ml-team"\n')
    config.chmod(0o644)
    (tmp_path / "train.py").write_text("print(1)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CORRAL_CONFIG", raising=False)
    options = _backend("slurm").options  # what corral.run/submit(spec, "slurm") use
    assert (options.partition, options.account) == ("gpu", "ml-team")
    dry = subprocess.run([sys.executable, "-m", "corral.cli", "run", "--backend", "slurm",
                          "--dry-run", "train.py"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "#SBATCH --partition=gpu" in dry.stdout and "#SBATCH --account=ml-team" in dry.stdout
