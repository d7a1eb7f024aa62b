"""Registries: decorator and entry points, lazy loading, collisions, "did you mean", plugins."""

import json
import os
import re
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


def test_registering_the_same_class_again_replaces_it_as_a_notebook_cell_rerun_would():
    reg = Registry("widget", "bench.no-such-group")
    cell = "@reg.register('w')\nclass Widget:\n    version = {}\n"
    scope = {"reg": reg, "__name__": "__main__"}
    exec(cell.format(1), scope)
    exec(cell.format(2), scope)  # the same cell, edited and run again
    assert reg.get("w").version == 2


def test_a_backbone_class_without_a_name_takes_the_registered_one(tmp_path):
    import numpy as np

    from backbones.base import Backbone, DataSpec, create_backbone
    from bench import api
    from bench.registry import BACKBONES

    @BACKBONES.register("nameless-mean")
    class Nameless(Backbone):
        layers = ["mean"]

        @classmethod
        def create(cls, name, spec, options):
            return cls()

        def layer_widths(self):
            return {"mean": 1}

        def preprocess(self, images):
            import torch

            return torch.from_numpy(np.asarray(images, dtype=np.float32)).flatten(1)

        def features(self, x, layers):
            return {"mean": x.mean(1, keepdim=True)}

        def config(self):
            return {"backbone": "nameless-mean"}

    assert create_backbone("nameless-mean", DataSpec(1, 8, 8)).name == "nameless-mean"
    df = api.run("nameless-mean", "linear-probe", "digits", limit=100, results=tmp_path,
                 options={"l2_grid": "1e-2"})
    assert set(df.backbone) == {"nameless-mean"} and len(list(tmp_path.glob("nameless-mean__*.json"))) == 1


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
    # The task plugin of the same package, written from docs/plugins.md: listed, and runs on any backbone.
    r = bench_subprocess("tasks", "list", env=env)
    assert r.code == 0 and "nearest-centroid" in r.out and "metric=cosine" in r.out, r
    r = bench_subprocess("-q", "run", "-b", "pixels", "-b", "color-stats", "-t", "nearest-centroid", "-d", "digits",
                         "--results", tmp_path / "res", env=env)
    assert r.code == 0, r
    (path,) = (tmp_path / "res").glob("pixels__digits__nearest-centroid__*.json")
    records = json.loads(path.read_text())["records"]
    test = [x["value"] for x in records if x["split"] == "test"]
    assert test and test[0] > 80  # pixels: far above chance (10%)
    r = bench_subprocess("run", "-b", "pixels", "-t", "nearest-centroid", "-d", "digits", "-o", "metric=manhattan",
                         env=env)
    assert r.code == 2 and "choose cosine, euclidean" in r.err, r
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


def test_the_plugins_page_shows_the_example_plugins_code_as_it_is():
    """The plugin in examples/ is the one docs/plugins.md teaches: its files appear there verbatim."""
    readme = (ROOT / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    package = ROOT / "examples" / "bench-plugin-example" / "bench_plugin_example"
    for module in ("__init__.py", "centroid.py"):
        code = (package / module).read_text()
        body = code.split('"""', 2)[2].lstrip("\n")  # the docstring aside
        assert any(body.strip() in block for block in blocks), module
