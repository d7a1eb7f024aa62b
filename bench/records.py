"""Result records: flat dicts, one number each, with everything needed to trust it.

A results file is JSON: ``{"format": "igpt-bench/results", "version": 1, "run": {...},
"records": [...]}``. Each record repeats the provenance, so records can be pooled freely.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bench.errors import BenchError

RESULTS_FORMAT = "igpt-bench/results"
RESULTS_VERSION = 1


def results_path(results_dir: str | Path, backbone: str, dataset: str, task: str, seed: int,
                 limit: int | None, options_changed: dict | None = None) -> Path:
    """One file per (backbone, dataset, task, seed, limit, non-default task options): a rerun
    replaces its own file."""
    import hashlib
    import json

    safe = backbone.replace("/", "--")
    tail = f"__n{limit}" if limit else ""
    if options_changed:
        blob = json.dumps(options_changed, sort_keys=True, default=str).encode()
        tail += "__o" + hashlib.sha256(blob).hexdigest()[:8]
    return Path(results_dir) / f"{safe}__{dataset}__{task}__seed{seed}{tail}.json"


def write_results(path: Path, run: dict, records: list[dict]) -> Path:
    """Write atomically: a temporary file in the same folder, renamed when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": RESULTS_FORMAT, "version": RESULTS_VERSION, "run": run, "records": records}
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_results(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchError(f"{path} is not a readable results file ({e}); pass files written by `bench run`") from None
    if not isinstance(doc, dict) or doc.get("format") != RESULTS_FORMAT:
        raise BenchError(f"{path} is not an igpt-bench results file; pass files written by `bench run`")
    return [dict(r, file=str(path)) for r in doc.get("records", [])]


def collect(paths) -> list[Path]:
    """Files named, plus every *.json under folders named."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.rglob("*.json"))
        elif p.is_file():
            files.append(p)
        else:
            raise BenchError(f"{p} does not exist; pass results files or folders")
    if not files:
        raise BenchError(f"no results files under {', '.join(map(str, paths))}; run `bench run` first")
    return files
