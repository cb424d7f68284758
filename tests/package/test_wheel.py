"""The wheel installs into a fresh venv and works from there: CLI, sample data, Python API,
packaged configs and notebook templates; the version lives in one place.

How the fresh venv gets its dependencies (offline, without re-downloading torch): the venv is made
with ``python -m venv --without-pip`` (no ``--system-site-packages``) and the wheel is installed
into it with this interpreter's pip (``pip --python VENV/bin/python install --no-deps --no-index``).
The test then resolves, from the *wheel's own* ``Requires-Dist`` (with the ``notebooks`` extra),
the transitive closure of distributions, each of which must be installed here in a satisfying
version, and links exactly those distributions' top-level files (packages, modules, ``*.libs``,
``.dist-info``) into one folder that a ``.pth`` file puts on the venv's path. So the venv sees the
declared dependencies and nothing else: an import of an undeclared package fails the test instead
of being silently borrowed, and ``imgae_dx`` itself is imported from the wheel's files (asserted).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from imgae_dx import __version__

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the project (the working tree stays untouched)."""
    work = tmp_path_factory.mktemp("wheel-build")
    src = work / "project"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    )
    dist = work / "dist"
    # Offline build without an isolated env (it would download setuptools): the build backend
    # installed here builds it. `python -m build` when available, else pip's own wheel builder.
    if importlib.util.find_spec("build") is not None:
        cmd = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check",
               "--outdir", str(dist), str(src)]
    else:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
               "--no-index", "-w", str(dist), str(src)]
    _run(cmd, cwd=work)
    wheels = list(dist.glob("imgae_dx-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


WHEEL_EXTRAS = ("notebooks",)


def _dependency_closure(wheel: Path) -> dict[str, importlib.metadata.Distribution]:
    """Installed distributions the wheel needs (its Requires-Dist + extras, transitively)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    todo: list[tuple[str, tuple[str, ...], str]] = [
        (line.split(":", 1)[1].strip(), WHEEL_EXTRAS, "imgae-dx")
        for line in text.splitlines() if line.startswith("Requires-Dist:")
    ]
    found: dict[str, importlib.metadata.Distribution] = {}
    while todo:
        spec, extras, parent = todo.pop()
        req = Requirement(spec)
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
            continue
        name = canonicalize_name(req.name)
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{parent} requires {spec}, which is not installed in this environment")
        if not req.specifier.contains(dist.version, prereleases=True):
            pytest.fail(f"{parent} requires {spec}, but {req.name} {dist.version} is installed")
        first = name not in found
        found[name] = dist
        if first or req.extras:
            todo += [(r, tuple(req.extras), name) for r in (dist.requires or [])]
    return found


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("fresh")
    root = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], cwd=base)
    py = root / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
          "--no-cache-dir", "-q", str(wheel)], cwd=base)
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=base).stdout.strip()
    deps = base / "declared-deps"
    deps.mkdir()
    for dist in _dependency_closure(wheel).values():
        site_dir = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in (dist.files or []) if Path(str(f)).parts[0] != ".."}
        tops.add(Path(str(dist._path)).name)  # the .dist-info folder (metadata lookups)
        for top in tops:
            if (site_dir / top).exists() and not (deps / top).exists():
                (deps / top).symlink_to(site_dir / top)
    (Path(purelib) / "_imgae_dx_declared_deps.pth").write_text(f"{deps}\n")
    return root


def _env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


def test_wheel_ships_configs_and_notebook_templates(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    src_pkg = REPO / "src" / "imgae_dx"
    for pattern in ("configs/*.yaml", "configs/*/*.yaml", "notebooks/templates/*.py.tmpl"):
        expected = {f"imgae_dx/{p.relative_to(src_pkg).as_posix()}" for p in src_pkg.glob(pattern)}
        assert expected, f"nothing matches {pattern} in the source tree"
        assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert "imgae_dx/configs/streaming_config.yaml" in names
    assert "imgae_dx/configs/cloud_configs/colab.yaml" in names
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "imgae-dx = imgae_dx.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_version_lives_in_one_place(wheel: Path):
    assert wheel.name.startswith(f"imgae_dx-{__version__}-")
    meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert f"\nVersion: {__version__}\n" in text
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"], "static version in pyproject.toml"
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "imgae_dx.__version__"}
    literal = re.compile(rf"""["']{re.escape(__version__)}["']""")
    home = REPO / "src" / "imgae_dx" / "__init__.py"
    elsewhere = [
        str(p.relative_to(REPO))
        for p in (REPO / "src" / "imgae_dx").rglob("*")
        if p.is_file() and p.suffix in (".py", ".yaml", ".tmpl") and p != home
        and literal.search(p.read_text(errors="replace"))
    ]
    assert not elsewhere, f"version {__version__} hard-coded in {elsewhere}"


def test_fresh_venv_cli_api_and_package_data(venv: Path, tmp_path: Path):
    env = _env(venv)
    py = str(venv / "bin" / "python")
    cli = str(venv / "bin" / "imgae-dx")
    assert Path(cli).is_file(), "console script imgae-dx not installed"

    # imgae_dx comes from the wheel's files, not from the source tree or the editable install
    where = _run([py, "-c", "import imgae_dx, sys; print(imgae_dx.__file__); print(sys.prefix)"],
                 cwd=tmp_path, env=env).stdout.split()
    assert Path(where[0]).resolve().is_relative_to(venv.resolve()), where
    assert Path(where[1]).resolve() == venv.resolve()

    # only declared dependencies are visible: an undeclared one is not importable
    probe = "import importlib.util as u; print([m for m in ('pytest', 'hypothesis', 'build') if u.find_spec(m)])"
    assert _run([py, "-c", probe], cwd=tmp_path, env=env).stdout.strip() == "[]"

    out = _run([cli, "--help"], cwd=tmp_path, env=env).stdout
    for command in ("sample-data", "setup-kaggle", "stream", "train", "evaluate", "report", "notebook", "demo"):
        assert command in out
    assert __version__ in _run([cli, "--version"], cwd=tmp_path, env=env).stdout

    _run([cli, "sample-data", str(tmp_path / "sample"), "--images-per-stage", "4", "--stages", "1"],
         cwd=tmp_path, env=env)
    with zipfile.ZipFile(tmp_path / "sample" / "data.zip") as z:
        names = z.namelist()
    assert "Data_Entry_2017.csv" in names
    assert sum(n.startswith("images_001/images/") and n.endswith(".png") for n in names) == 4

    api = (
        "from imgae_dx.streaming import KaggleStreamClient, ColabStreamingSetup, StreamingTrainer\n"
        "from imgae_dx.config import load_config, packaged_config_path\n"
        "import imgae_dx\n"
        "from pathlib import Path\n"
        "root = Path(imgae_dx.__file__).parent\n"
        "assert packaged_config_path('cloud_configs', 'colab.yaml').is_relative_to(root)\n"
        "cfg = load_config(profile='colab')\n"
        "assert cfg.out.startswith('/content/drive'), cfg.out\n"
        "assert callable(StreamingTrainer.from_colab_config)\n"
        "print('API OK')\n"
    )
    assert "API OK" in _run([py, "-c", api], cwd=tmp_path, env=env).stdout

    _run([cli, "notebook", "--out", str(tmp_path / "nb.ipynb")], cwd=tmp_path, env=env)
    assert '"parameters"' in (tmp_path / "nb.ipynb").read_text()
