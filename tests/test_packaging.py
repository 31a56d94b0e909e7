"""What Dataflow workers install: the source distribution Beam stages for `--setup_file`.

`--setup_file ./setup.py` makes the launcher build an sdist of the project (Beam's
`Stager._build_setup_package`: `python -m build --sdist --no-isolation` when `build` is
installed, else `python setup.py sdist`) and every worker pip-installs it, i.e. builds a wheel
from it. These tests build both from a copy of the repository's files (tracked and untracked
but not ignored; the checkout itself is never written to, no network) and check that:

* the sdist holds every package (directory with an `__init__.py`) and every module of
  `attribution/`, `pipeline/` and `transforms/`, `setup.py`, README.md and every default config
  of `configs/` (the YAML files and configs/README.md, via MANIFEST.in);
* the wheel built from that sdist holds every package module, nothing but those packages, and
  the `igbeam` console script.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("attribution", "pipeline", "transforms")


def _repository_files() -> list[str]:
    """The repository's files as git sees them (tracked, and untracked but not ignored)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: cannot list the repository's files")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
    )
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.decode(errors='replace').strip()}")
    names = [n for n in listed.stdout.decode().split("\0") if n]
    return sorted(n for n in names if (REPO / n).is_file())  # deleted but tracked: skipped


@pytest.fixture(scope="module")
def files() -> list[str]:
    return _repository_files()


@pytest.fixture(scope="module")
def expected_modules(files) -> list[str]:
    """Every .py file of the three packages (relative paths), checked to be non-trivial."""
    modules = [f for f in files if f.endswith(".py") and f.split("/")[0] in PACKAGES]
    for package in PACKAGES:
        assert f"{package}/__init__.py" in modules, package
    assert "transforms/attribute.py" in modules and "pipeline/job.py" in modules
    return modules


@pytest.fixture(scope="module")
def expected_packages(files) -> list[str]:
    """Every directory of the three packages holding an `__init__.py`, as dotted names."""
    return sorted(
        f.rsplit("/", 1)[0].replace("/", ".")
        for f in files
        if f.endswith("/__init__.py") and f.split("/")[0] in PACKAGES
    )


@pytest.fixture(scope="module")
def source_copy(files, tmp_path_factory) -> Path:
    """A copy of the repository's files: setup.py writes build/ and *.egg-info next to it."""
    root = tmp_path_factory.mktemp("source") / "igbeam"
    for name in files:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    return root


def _build_sdist(source: Path, out: Path) -> Path:
    """Builds the sdist as Beam's launcher does for `--setup_file` (falls back to setup.py)."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        from apache_beam.runners.portability.stager import Stager

        build = Stager._build_setup_package
    except (ImportError, AttributeError):  # another Beam: the command its stager falls back to
        build = None
    if build is not None:
        tarball = build(str(source / "setup.py"), str(out))
    else:
        _run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(out)], source)
        (tarball,) = out.glob("*.tar.gz")
    return Path(tarball)


def _run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def sdist(source_copy, tmp_path_factory) -> tuple[str, set[str], Path]:
    """(top directory, member paths relative to it, tarball) of the sdist Beam stages."""
    tarball = _build_sdist(source_copy, tmp_path_factory.mktemp("sdist"))
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    tops = {n.split("/", 1)[0] for n in names}
    assert len(tops) == 1, f"an sdist has one top directory, got {sorted(tops)}"
    (top,) = tops
    members = {n.split("/", 1)[1] for n in names if "/" in n}
    return top, members, tarball


@pytest.fixture(scope="module")
def wheel(sdist, tmp_path_factory) -> tuple[set[str], zipfile.ZipFile]:
    """The wheel a worker's pip builds from the staged sdist: (names, open archive)."""
    top, _, tarball = sdist
    unpacked = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(tarball) as tar:
        tar.extractall(unpacked, filter="data")
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "setup.py", "-q", "bdist_wheel", "--dist-dir", str(out)], unpacked / top)
    (path,) = out.glob("*.whl")
    archive = zipfile.ZipFile(path)
    yield set(archive.namelist()), archive
    archive.close()


def test_sdist_holds_every_package_module(sdist, expected_modules, expected_packages):
    _, members, _ = sdist
    missing = [m for m in expected_modules if m not in members]
    assert not missing, f"modules missing from the sdist: {missing}"
    for package in expected_packages:
        assert f"{package.replace('.', '/')}/__init__.py" in members, package
    assert "setup.py" in members  # workers install the sdist by running it


def test_sdist_holds_readme_and_every_default_config(sdist, files):
    _, members, _ = sdist
    configs = [f for f in files if f.startswith("configs/")]
    yaml_configs = [f for f in configs if f.endswith((".yaml", ".yml"))]
    assert yaml_configs and "configs/README.md" in configs  # the checkout has default configs
    missing = [f for f in ["README.md", *configs] if f not in members]
    assert not missing, f"files missing from the sdist (see MANIFEST.in): {missing}"


def test_sdist_does_not_carry_build_leftovers(sdist):
    _, members, _ = sdist
    stray = sorted(
        m for m in members if m.startswith(("build/", ".venv/", "dist/")) or "__pycache__" in m
    )
    assert not stray, f"build outputs in the sdist: {stray[:10]}"


def test_wheel_built_from_the_sdist_holds_every_package_module(
    wheel, expected_modules, expected_packages
):
    names, _ = wheel
    missing = [m for m in expected_modules if m not in names]
    assert not missing, f"modules missing from the wheel: {missing}"
    for package in expected_packages:
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    # Only the three packages and the wheel's metadata: no tests, benchmarks or stale build/.
    tops = {n.split("/", 1)[0] for n in names}
    metadata = {t for t in tops if t.endswith(".dist-info")}
    assert len(metadata) == 1
    assert tops - metadata == set(PACKAGES)
    extra = sorted(n for n in names if n.endswith(".py") and n not in expected_modules)
    assert not extra, f"modules in the wheel that are not in the checkout: {extra}"


def test_wheel_declares_the_igbeam_command(wheel):
    names, archive = wheel
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(archive.read(entry_points).decode())
    target = parser["console_scripts"]["igbeam"]
    module, _, function = target.partition(":")
    assert f"{module.replace('.', '/')}.py" in names
    source = archive.read(f"{module.replace('.', '/')}.py").decode()
    assert f"def {function}(" in source
