"""The job spec: validation that names the field, the value and what is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from corral.errors import JobFileError, SpecError
from corral.jobfile import load_job_file
from corral.spec import JobSpec, JobState, Script, parse_duration, parse_memory_mb


def script(**fields: object) -> JobSpec:
    return JobSpec(entrypoint={"kind": "script", "path": "train.py"}, **fields)


def test_defaults_and_world_size() -> None:
    spec = script(nodes=2, procs_per_node=4)
    assert spec.world_size == 8
    assert spec.launcher == "none"
    assert isinstance(spec.entrypoint, Script)
    with pytest.raises(ValidationError, match="frozen"):
        spec.nodes = 3  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    ("fields", "field", "value", "accepted"),
    [
        ({"nodes": 0}, "nodes", 0, "greater than or equal to 1"),
        ({"procs_per_node": "many"}, "procs_per_node", "many", "valid integer"),
        ({"launcher": "srun"}, "launcher", "srun", "torchrun, mpirun, deepspeed, tensorflow, jax"),
        ({"env": {"1BAD": "x"}}, "env", {"1BAD": "x"}, "not a valid variable name"),
        ({"time_limit": "soon"}, "time_limit", "soon", "'1h30m'"),
        ({"time_limit": -5}, "time_limit", -5, "more than 0"),
        ({"resources": {"memory": "lots"}}, "resources.memory", "lots", "'4G'"),
        ({"resources": {"gpus": -1}}, "resources.gpus", -1, "greater than or equal to 0"),
        ({"args": "--lr 0.1"}, "args", "--lr 0.1", "list of strings"),
        ({"nodez": 2}, "nodez", 2, "unknown field; accepted: args, entrypoint"),
        ({"resources": {"gpu": 1}}, "resources.gpu", 1, "accepted: cpus, gpus, memory_mb"),
    ],
)
def test_bad_field_is_named_with_value_and_accepted(
    fields: dict, field: str, value: object, accepted: str
) -> None:
    with pytest.raises(SpecError) as info:
        script(**fields)
    problems = {p[0]: p for p in info.value.problems}
    assert field in problems, info.value
    assert problems[field][1] == value
    assert accepted in problems[field][2]
    assert field in str(info.value) and repr(value) in str(info.value)


def test_several_problems_reported_together() -> None:
    with pytest.raises(SpecError) as info:
        script(nodes=-1, launcher="x", time_limit="?")
    assert {p[0] for p in info.value.problems} == {"nodes", "launcher", "time_limit"}


def test_entrypoint_kinds() -> None:
    assert JobSpec(entrypoint={"kind": "module", "module": "pkg.train"}).entrypoint.kind == "module"
    with pytest.raises(SpecError, match="entrypoint"):
        JobSpec(entrypoint={"kind": "module", "module": "not a module"})
    with pytest.raises(SpecError, match="entrypoint"):
        JobSpec(entrypoint={"kind": "command", "argv": []})
    with pytest.raises(SpecError, match="launcher 'none', 'torchrun' or 'ray', not 'mpirun'"):
        JobSpec(entrypoint={"kind": "function", "fn": print}, launcher="mpirun")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90.0), ("90", 90.0), ("90s", 90.0), ("1h30m", 5400.0), ("2d", 172800.0),
     ("01:30:00", 5400.0), ("30:00", 1800.0), ("1-00:00:10", 86410.0), ("1.5m", 90.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "mb"), [(4096, 4096), ("4G", 4096), ("512M", 512), ("1.5GiB", 1536), ("1T", 1048576)]
)
def test_memory(text: object, mb: int) -> None:
    assert parse_memory_mb(text) == mb


def test_states() -> None:
    assert JobState.FAILED.is_terminal() and not JobState.RUNNING.is_terminal()
    assert {s for s in JobState if s.is_terminal()} == {
        JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT}


def test_yaml_and_toml_job_files(tmp_path: Path) -> None:
    yaml_file = tmp_path / "job.yaml"
    yaml_file.write_text(
        "name: demo\nscript: train.py\nargs: ['--lr', '0.1']\nnodes: 2\n"
        "launcher: torchrun\nresources: {memory: 2G}\ntime_limit: 10m\n", encoding="utf-8")
    spec = load_job_file(yaml_file)
    assert (spec.name, spec.nodes, spec.launcher, spec.args) == (
        "demo", 2, "torchrun", ("--lr", "0.1"))
    assert spec.resources.memory_mb == 2048 and spec.time_limit == 600
    toml_file = tmp_path / "job.toml"
    toml_file.write_text('command = "echo hi"\nprocs_per_node = 3\n', encoding="utf-8")
    spec = load_job_file(toml_file, nodes=2)
    assert spec.entrypoint.argv == ("echo", "hi") and spec.nodes == 2  # type: ignore[union-attr]


def test_job_file_errors(tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match="cannot read"):
        load_job_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(JobFileError, match="not valid yaml"):
        load_job_file(bad)
    both = tmp_path / "both.yaml"
    both.write_text("script: a.py\nmodule: b\n", encoding="utf-8")
    with pytest.raises(SpecError, match="exactly one of script, module, command"):
        load_job_file(both)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("script: a.py\nnodes: zero\n", encoding="utf-8")
    with pytest.raises(SpecError, match="nodes: got 'zero'"):
        load_job_file(wrong)


def test_backend_defaults_from_corral_toml_and_pyproject(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.backends import backend_options
    from corral.config import backend_defaults

    project = tmp_path / "proj"
    (project / "sub").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[tool.corral.slurm]\npartition = "gpu"\nexclusive = true\n', encoding="utf-8")
    monkeypatch.chdir(project / "sub")
    assert backend_defaults("slurm") == {"partition": "gpu", "exclusive": True}
    (project / "sub" / "corral.toml").write_text('[slurm]\nqos = "high"\n', encoding="utf-8")
    assert backend_defaults("slurm") == {"qos": "high"}
    assert backend_defaults("local") == {}
    options = backend_options("slurm", backend_defaults("slurm"))
    assert options.qos == "high"
    (project / "sub" / "corral.toml").write_text('[slurm]\nqos = "a b"\n', encoding="utf-8")
    with pytest.raises(SpecError, match=r"slurm\.qos"):
        backend_options("slurm", backend_defaults("slurm"))
