"""Registries: decorator and entry points, lazy loading, collisions, "did you mean", plugins."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from bench.errors import BenchError
from bench.registry import Registry
from tests.conftest import ROOT, bench_subprocess


def test_decorator_registration_and_did_you_mean():
    reg = Registry("widget", "bench.no-such-group")

    @reg.register("round-widget")
    class Round:
        pass

    assert reg.names() == ["round-widget"] and reg.get("round-widget") is Round
    assert reg.names("round*") == ["round-widget"] and reg.names("square*") == []
    with pytest.raises(BenchError, match=r"unknown widget 'round-widgit' \(did you mean 'round-widget'\?\)"):
        reg.get("round-widgit")


def test_a_name_registered_twice_names_both_sources():
    reg = Registry("widget", "bench.no-such-group")

    @reg.register("w")
    class A:
        pass

    with pytest.raises(BenchError, match=r"registered twice: by .*A and by .*B"):
        @reg.register("w")
        class B:
            pass


def test_listing_does_not_import_torch():
    code = textwrap.dedent("""
        import sys
        from bench.cli import main
        for cmd in (["tasks", "list"], ["datasets", "list"]):
            try:
                main(cmd)
            except SystemExit as e:
                assert e.code == 0, e.code
        print("torch" in sys.modules, "timm" in sys.modules, "backbones.timm_models" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False False"


def _pip_install(src, target):
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(src)], check=True, capture_output=True, text=True)


def test_third_party_plugin_installed_with_pip_lists_and_runs(tmp_path):
    src = tmp_path / "plugin-src"
    shutil.copytree(ROOT / "examples" / "bench-plugin-example", src)
    site = tmp_path / "site"
    _pip_install(src, site)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    r = bench_subprocess("backbones", "list", "color*", env=env)
    assert r.code == 0 and "color-stats" in r.out and "bench-plugin-example" in r.out, r
    r = bench_subprocess("backbones", "show", "color-stats", "--dataset", "digits", env=env)
    assert r.code == 0 and "moments" in r.out, r
    r = bench_subprocess("-q", "run", "-b", "color-stats", "-t", "linear-probe", "-d", "digits",
                         "--results", tmp_path / "res", env=env)
    assert r.code == 0, r
    assert "mean" in r.out and "moments" in r.out
    # Without the plugin on the path the name is unknown again.
    r = bench_subprocess("backbones", "show", "color-stats")
    assert r.code == 2 and "unknown backbone 'color-stats'" in r.err


def test_plugin_claiming_a_builtin_name_is_an_error_naming_both(tmp_path):
    src = tmp_path / "clash"
    (src / "clash_plugin").mkdir(parents=True)
    (src / "clash_plugin" / "__init__.py").write_text("from backbones.pixels import PixelsBackbone as Mine\n")
    (src / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "clash-plugin"
        version = "0.0.1"
        [project.entry-points."bench.backbones"]
        pixels = "clash_plugin:Mine"
    """))
    site = tmp_path / "site"
    _pip_install(src, site)
    env = {"PYTHONPATH": str(site)}
    r = bench_subprocess("backbones", "list", env=env)
    assert r.code == 2
    assert "registered twice" in r.err and "igpt-bench" in r.err and "clash-plugin" in r.err
