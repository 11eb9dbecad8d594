"""The wheel ships the Hydra configs: built from a copy of the working tree (sdist, then wheel, as
``python -m build`` does; and straight from the tree, as ``pip install .`` does), installed with
``pip install --target`` and run from outside the repository, ``ekd`` reads ``ekd/_configs/`` and
``ekd-train`` composes an experiment. Also: how ``ekd.config.paths`` chooses between the two locations."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml

from ekd.config.paths import find_source_root, resolve_config_dir

REPO = Path(__file__).resolve().parents[2]
CONFIG_FOLDERS = ("conf", "experiments")


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def _copy_working_tree(target: Path) -> None:
    """The files a clone has plus uncommitted work (tracked and untracked, minus .gitignore'd ones)."""
    listing = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO).stdout
    for name in filter(None, listing.split("\0")):
        source = REPO / name
        if source.is_file():  # tracked files deleted in the working tree are skipped
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _config_files(root: Path) -> set[str]:
    return {
        path.relative_to(root).as_posix()
        for folder in CONFIG_FOLDERS
        for path in (root / folder).rglob("*")
        if path.is_file()
    }


def _wheel_configs(wheel: Path) -> set[str]:
    prefix = "ekd/_configs/"
    with zipfile.ZipFile(wheel) as archive:
        return {name[len(prefix) :] for name in archive.namelist() if name.startswith(prefix)}


def _pip_wheel(source: Path, out: Path) -> Path:
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-cache-dir"]
        + ["-w", str(out), str(source)],
        cwd=out.parent,
    )
    (wheel,) = out.glob("ekd-*.whl")
    return wheel


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> dict[str, Path]:
    """Source copy, the wheels built from its sdist and from the tree, the sdist wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    _copy_working_tree(source)
    sdist_dir = tmp / "sdist"
    sdist_name = (
        _run(
            [
                sys.executable,
                "-c",
                f"from setuptools import build_meta; print(build_meta.build_sdist({str(sdist_dir)!r}))",
            ],
            cwd=source,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    wheel_from_sdist = _pip_wheel(sdist_dir / sdist_name, tmp / "wheel_from_sdist")
    wheel_from_tree = _pip_wheel(source, tmp / "wheel_from_tree")
    site = tmp / "site"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel_from_sdist),
        ],
        cwd=tmp,
    )
    elsewhere = tmp / "elsewhere"  # cwd of the installed package's runs: no repository around it
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "disabled"}
    return {
        "source": source,
        "wheel_from_sdist": wheel_from_sdist,
        "wheel_from_tree": wheel_from_tree,
        "site": site,
        "elsewhere": elsewhere,
        "env": env,
    }


def _synthetic_experiment(experiments: Path) -> str:
    """Any synthetic experiment (not a ``_``-prefixed shared recipe), named as ``experiment=`` takes it."""
    names = sorted(
        path.relative_to(experiments).with_suffix("").as_posix()
        for path in (experiments / "synthetic").rglob("*.yaml")
        if not path.name.startswith("_")
    )
    assert names, f"no synthetic experiment under {experiments}"
    return names[0]


def test_both_wheels_ship_every_config_file_and_git_keeps_no_copy(build):
    expected = _config_files(build["source"])
    assert "conf/train.yaml" in expected
    assert _wheel_configs(build["wheel_from_sdist"]) == expected
    assert _wheel_configs(build["wheel_from_tree"]) == expected
    assert not (build["source"] / "ekd" / "_configs").exists()  # generated in the build folder only


_CHECK_INSTALLED = textwrap.dedent(
    """
    import json, sys
    from hydra import compose, initialize_config_dir
    import ekd, ekd.config as config

    experiments = sorted(
        p.relative_to(config.EXPERIMENTS_DIR).with_suffix("").as_posix()
        for p in (config.EXPERIMENTS_DIR / "synthetic").rglob("*.yaml")
        if not p.name.startswith("_")
    )
    config.register_configs()
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiments[0]}", "distill=ekd"])
    print(json.dumps({
        "ekd": ekd.__file__,
        "conf": str(config.CONF_DIR),
        "experiments": str(config.EXPERIMENTS_DIR),
        "source_root": None if config.REPO_ROOT is None else str(config.REPO_ROOT),
        "experiment": experiments[0],
        "method": cfg.distill.method,
        "objectives": list(cfg.distill.objectives),
    }))
    """
)


def test_installed_package_composes_from_its_packaged_configs(build):
    site = build["site"].resolve()
    out = _run([sys.executable, "-c", _CHECK_INSTALLED], cwd=build["elsewhere"], env=build["env"])
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(found["ekd"]).resolve().is_relative_to(site), found  # not the editable checkout
    assert Path(found["conf"]) == site / "ekd" / "_configs" / "conf"
    assert Path(found["experiments"]) == site / "ekd" / "_configs" / "experiments"
    assert found["source_root"] is None
    assert found["experiment"].startswith("synthetic/")
    assert found["method"] == "ekd" and found["objectives"] == ["ekd"]


def test_installed_ekd_train_prints_the_composed_job(build):
    experiment = _synthetic_experiment(build["site"] / "ekd" / "_configs" / "experiments")
    out = _run(
        [sys.executable, "-m", "ekd.cli.train", "--cfg", "job", f"experiment={experiment}", "distill=ekd"],
        cwd=build["elsewhere"],
        env=build["env"],
    )
    job = yaml.safe_load(out.stdout)
    assert job["distill"]["method"] == "ekd" and list(job["distill"]["objectives"]) == ["ekd"]
    assert not list(build["elsewhere"].iterdir())  # --cfg job prints only: no outputs/ folder


def test_checkout_folders_come_first_then_the_packaged_copies(tmp_path):
    checkout, packaged = tmp_path / "checkout", tmp_path / "packaged"
    (packaged / "conf").mkdir(parents=True)
    assert resolve_config_dir("conf", None, packaged) == packaged / "conf"
    assert resolve_config_dir("conf", checkout, packaged) == packaged / "conf"  # checkout without conf/
    (checkout / "conf").mkdir(parents=True)
    assert resolve_config_dir("conf", checkout, packaged) == checkout / "conf"


def test_missing_config_folder_names_both_locations(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        resolve_config_dir("experiments", tmp_path / "checkout", tmp_path / "packaged")
    assert str(tmp_path / "checkout" / "experiments") in str(error.value)
    assert str(tmp_path / "packaged" / "experiments") in str(error.value)
    with pytest.raises(FileNotFoundError, match="no source checkout"):
        resolve_config_dir("experiments", None, tmp_path / "packaged")


def test_source_root_is_the_folder_with_pyproject_above_the_package(tmp_path):
    assert find_source_root(REPO / "ekd") == REPO
    (tmp_path / "ekd").mkdir()  # site-packages: no pyproject.toml next to the package
    assert find_source_root(tmp_path / "ekd") is None
