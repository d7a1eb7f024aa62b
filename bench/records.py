"""Result records: flat dicts, one number each, with everything needed to trust it.

A results file is JSON: ``{"format": "igpt-bench/results", "version": 2, "run": {...},
"records": [...]}`` (version 1 files, without per-record provenance, are still read). ``run`` holds the result's ``identity`` (what was measured) and provenance;
each record repeats the provenance and the run id, so records can be pooled freely and still be
told apart by run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

from bench.errors import BenchError
from bench.files import atomic_write_bytes

RESULTS_FORMAT = "igpt-bench/results"
RESULTS_VERSION = 2
READABLE_VERSIONS = (1, 2)
TAG = re.compile(r"[\w.+-]{1,64}")


def check_tag(tag: str | None) -> str | None:
    """A user's label for a run: letters, digits, '.', '_', '+', '-' (it becomes part of a file name)."""
    if tag is not None and not TAG.fullmatch(tag):
        raise BenchError(f"--tag {tag!r} must be 1-64 letters, digits, '.', '_', '+' or '-' (no path "
                         "separators or spaces); e.g. --tag baseline")
    return tag


def run_id(identity: dict) -> str:
    """A short hash of a result's identity: file names, skip-if-done and report grouping key on it."""
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def results_path(results_dir: str | Path, backbone: str, weights_label: str | None, identity: dict) -> Path:
    """``<backbone>[@<weights>]__<dataset>__<task>[__<tag>]__<run id>.json``: readable, and apart for
    every identity (another checkpoint, weights file, layer set, option, seed or limit)."""
    name = backbone.replace("/", "--") + (f"@{weights_label}" if weights_label else "")
    name = re.sub(r"[^\w.@+-]", "_", name)
    tag = f"__{identity['tag']}" if identity.get("tag") else ""
    return Path(results_dir) / f"{name}__{identity['dataset']}__{identity['task']}{tag}__{run_id(identity)}.json"


def finished_run(path: Path, identity: dict) -> list[dict] | None:
    """The records of ``path`` when it holds a finished run with this identity, else None."""
    try:
        if not Path(path).is_file():
            return None
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None  # unreadable (or an impossible name, which check_writable words)
    if not isinstance(doc, dict) or doc.get("format") != RESULTS_FORMAT or doc.get("version") not in READABLE_VERSIONS:
        return None
    run = doc.get("run") or {}
    if run.get("identity") != json.loads(json.dumps(identity, sort_keys=True, default=str)):
        return None
    records = doc.get("records")
    if not isinstance(records, list) or not records or any(record_problem(r) for r in records) or run_problem(records):
        return None  # damaged: computed again
    return [dict(r, file=str(path)) for r in records]


def write_results(path: Path, run: dict, records: list[dict]) -> Path:
    """One results file, written atomically."""
    doc = {"format": RESULTS_FORMAT, "version": RESULTS_VERSION, "run": run, "records": records}
    return atomic_write_bytes(path, (json.dumps(doc, indent=1, default=str) + "\n").encode())


def _parse(path: Path):
    """The JSON document in ``path``; BenchError naming the file when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        why = getattr(e, "strerror", None) or ("nested too deeply" if isinstance(e, RecursionError) else e)
        raise BenchError(f"{path} is not a readable results file ({why}); pass files written by `bench run`") from None


def read_results(path: str | Path) -> list[dict]:
    """The records of a results file, each with ``file`` set; BenchError naming the file when it is
    not one, is of a version this code does not know, or holds a damaged record."""
    path = Path(path)
    doc = _parse(path)
    if not isinstance(doc, dict) or doc.get("format") != RESULTS_FORMAT:
        raise BenchError(f"{path} is not an igpt-bench results file; pass files written by `bench run`")
    version = doc.get("version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise BenchError(f"{path} is a results file of version {str(version)[:20]}, which this igpt-bench does not "
                         f"know (it reads {', '.join(map(str, READABLE_VERSIONS))}); upgrade igpt-bench or move the "
                         "file away")
    records = doc.get("records")
    if not isinstance(records, list):
        raise BenchError(f"{path} has no list of records; rerun the `bench run` that wrote it")
    if not records:
        raise BenchError(f"{path} holds no records (a run writes at least one); rerun the `bench run` that wrote it "
                         "or move the file away")
    for i, r in enumerate(records):
        problem = record_problem(r)
        if problem:
            raise BenchError(f"{path}: record {i} {problem}; rerun the `bench run` that wrote it")
    problem = run_problem(records)
    if problem:
        raise BenchError(f"{path}: {problem}; rerun the `bench run` that wrote it")
    return [dict(r, file=str(path)) for r in records]


INT64_MAX = 2**63 - 1  # the tables hold whole numbers as pandas Int64
MAX_MAGNITUDE = 1e150  # no task measures more; larger overflows the spread over seeds and the plots' axes
INTEGER_METRICS = {"k", "epoch"}  # metrics that count something: shown without decimals


def _number(v) -> bool:
    """A number within ±MAX_MAGNITUDE, or NaN or an infinity (a diverged loss is a measurement too)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    return (isinstance(v, float) and not math.isfinite(v)) or abs(v) <= MAX_MAGNITUDE


def _whole(lo: int):
    return lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= INT64_MAX)


def _text(v) -> bool:
    return v is None or isinstance(v, str)


# What the tables and plots read from a record, and what each must be (None is allowed but for metric).
_FIELDS = {
    "metric": (lambda v: isinstance(v, str) and v != "", "a metric name"),
    **{k: (lambda v: v is None or _number(v), f"a number within ±{MAX_MAGNITUDE:g}")
       for k in ("value", "depth", "lo", "hi", "gap", "gap_share")},
    **{k: (lambda v: v is None or (_number(v) and not v < 0), f"a number in 0..{MAX_MAGNITUDE:g} (a spread)")
       for k in ("stderr", "std", "val_stderr")},
    **{k: (_whole(0), f"a whole number in 0..{INT64_MAX}")
       for k in ("n", "step", "layer_index", "epoch", "seed", "labels", "groups", "shared_steps")},
    **{k: (_whole(1), f"a count in 1..{INT64_MAX}") for k in ("shots", "seeds", "limit")},
    **{k: (lambda v: v is None or isinstance(v, bool), "true or false") for k in ("curve", "agrees", "separable")},
    **{k: (_text, "text")
       for k in ("layer", "split", "backbone", "dataset", "task", "run", "tag", "weights", "fingerprint", "study",
                 "kind", "point", "size", "quality", "scope", "better", "caution")},
}
# Columns the report derives from the records (bench.report, bench.paired): a record never holds them.
DERIVED_COLUMNS = {"best", "won", "run_name", "seed_n", "seed_std", "seed_label", "cmp_pool", "cmp_rank", "cmp_pos",
                   "note"}
# A study's records (``study`` set) by kind: the fields its tables cannot do without, and those that
# must be there though the study writes null where a number is undefined.
_STUDY_FIELDS = {"layer": ("point", "size", "depth"), "best": ("point", "size", "depth"),
                 "quality": ("point", "size"), "stat": ("quality", "n"), "separation": ("quality", "shared_steps")}
_STUDY_KEYS = {"stat": ("lo", "hi"), "separation": ("value", "gap", "gap_share", "separable")}


def record_problem(r) -> str:
    """'' for a well-formed record, else what is wrong with it: every field the tables and plots
    compute with is of its type and range, so a hand-edited record is refused by name, never an
    overflow or a type error midway through a report."""
    if not isinstance(r, dict):
        return f"is a {type(r).__name__}, not an object"
    if "metric" not in r or "value" not in r:
        return "lacks its metric or value"
    derived = sorted(k for k in r if k in DERIVED_COLUMNS or str(k).startswith("_"))
    if derived:
        return f"holds {derived[0][:40]!r}, a column the report computes itself"
    missing = [k for k in ("dataset", "task", "layer", "split") if r.get(k) is None]  # the tables group by them
    if missing:
        return f"lacks its {' and '.join(missing)}"
    for key, (ok, what) in _FIELDS.items():
        if key in r and not ok(r[key]):
            return f"has {key} = {str(r[key])[:40]!r}, which is not {what}"
    value = r["value"]
    if r["metric"] in INTEGER_METRICS and value is not None and not (
            float(value).is_integer() and 0 <= value <= INT64_MAX):
        return f"has {r['metric']} = {str(value)[:40]!r}, which is not a whole number in 0..{INT64_MAX}"
    if r["metric"] == "top1" and (value is None or not 0 <= value <= 100):  # layers are chosen by it
        return f"has top1 = {str(value)[:40]!r}, which is not a finite percentage in 0..100"
    if r.get("study") is not None:
        return study_record_problem(r)
    return ""


def study_record_problem(r: dict) -> str:
    """``record_problem`` for a record of a study file: a study and kind this code knows, the
    fields of its kind, and values its tables can show (a depth in 0..1, an interval lo <= hi, a
    direction, method and scope the correlation study writes)."""
    from tasks.correlation import KINDS, METHODS, SCOPES

    if r["study"] != "correlation":
        return f"is a record of a study {str(r['study'])[:40]!r}, which this igpt-bench does not know (correlation)"
    kind = r.get("kind")
    if not isinstance(kind, str):
        return "is a study record without its kind"
    if kind not in KINDS:
        return f"is a study record of kind {kind[:40]!r}, which a correlation study does not write ({', '.join(KINDS)})"
    missing = [k for k in _STUDY_FIELDS[kind] if r.get(k) is None] + [k for k in _STUDY_KEYS.get(kind, ()) if k not in r]
    if missing:
        return f"is a study record ({kind}) without its {', '.join(missing)}"
    if (r.get("lo") is None) != (r.get("hi") is None):
        return "is a study record with one end of its interval (lo, hi)"
    if r.get("lo") is not None and not r["lo"] <= r["hi"]:
        return f"is a study record whose interval runs backwards (lo {r['lo']:g} > hi {r['hi']:g})"
    if r.get("depth") is not None and not 0 <= r["depth"] <= 1:
        return f"has depth = {r['depth']:g}, which is not a relative depth in 0..1"
    if r.get("better") not in (None, "lower", "higher"):
        return f"has better = {str(r['better'])[:40]!r}, which is not lower or higher"
    if kind == "stat":
        scope = r.get("scope")
        if r["metric"] not in METHODS:
            return f"is a statistic of method {r['metric'][:40]!r}, which is not {' or '.join(METHODS)}"
        if scope is not None and scope not in SCOPES:
            return f"has scope = {str(scope)[:40]!r}, which is not one of {', '.join(SCOPES)}"
        if scope == "within size" and r.get("size") is None:
            return "is a statistic within a size without its size"
        if scope == "matched steps" and r.get("groups") is None:
            return "is a statistic at matched steps without its groups"
    return ""


# What one run's records all say alike (they are stamped from the run); a study's checkpoints differ
# in the model fields.
_RUN_FIELDS = ("run", "dataset", "task", "seed", "limit", "tag")
_MODEL_FIELDS = ("backbone", "fingerprint", "weights", "step")
_MEASURED = ("value", "stderr", "std", "lo", "hi", "n", "resamples", "file")  # a record's numbers, not what it measures


def run_problem(records: list[dict]) -> str:
    """'' for the well-formed records of one results file that make whole tables, else what is
    wrong: they disagree on the run they belong to, or they claim to be a study but lack its parts
    (``study_problem``)."""
    plain = [r for r in records if r.get("study") is None]
    for fields, group in ((_RUN_FIELDS, records), (_MODEL_FIELDS, plain)):
        for key in fields:
            values = list(dict.fromkeys(json.dumps(r.get(key)) for r in group))
            if len(values) > 1:
                return f"its records disagree on the {key} ({values[0][:40]} and {values[1][:40]})"
    if plain and len(plain) < len(records):
        return "it mixes a study's records with a run's (some records name a study, some do not)"
    seen: dict[str, int] = {}
    for i, r in enumerate(records):  # one measurement, one record: a repeat would count twice in the tables
        key = json.dumps({k: v for k, v in r.items() if k not in _MEASURED}, sort_keys=True, default=str)
        if key in seen:
            return f"its record {i} measures what record {seen[key]} does ({r['layer']} {r['split']} {r['metric']})"
        seen[key] = i
    return study_problem(records) if not plain else ""


def study_problem(records: list[dict]) -> str:
    """'' for the records of a whole study file, else which part is missing: every checkpoint (a
    ``point`` of layer, quality or best records) has its best layer's val and test top-1; there are
    as many checkpoints as a correlation needs; there are statistics, and each is of a quality
    measure the checkpoints were measured in. A study file is read as a whole or refused: its
    statistics mean nothing without the points they were computed from."""
    from tasks.correlation import MIN_POINTS

    points: dict[str, list] = {}
    for r in records:
        if r["kind"] in ("layer", "quality", "best"):
            points.setdefault(r["point"], []).extend([r.get("split")] if r["kind"] == "best" else [])
    for point, splits in points.items():
        if not {"val", "test"} <= set(splits):
            return f"its study's checkpoint {point[:40]!r} lacks its best layer's val and test records"
        if len(splits) > 2:
            return f"its study's checkpoint {point[:40]!r} has {len(splits)} best-layer records (one val, one test)"
    if len(points) < MIN_POINTS:
        return (f"it claims to be a study but holds {len(points)} checkpoint{'' if len(points) == 1 else 's'} "
                f"(a correlation has at least {MIN_POINTS})")
    measured = {r["metric"] for r in records if r["kind"] == "quality"}
    stats = [r for r in records if r["kind"] in ("stat", "separation")]
    if not any(r["kind"] == "stat" for r in stats):
        return "it claims to be a study but holds no statistics (stat records)"
    for r in stats:
        if r["quality"] not in measured:
            return f"its study has a statistic of {str(r['quality'])[:40]!r}, which no checkpoint was measured in"
    return ""


def _is_results(path: Path) -> bool:
    """Whether a JSON file found in a folder is a results file, decided by parsing it (key order is
    any JSON tool's to change). Only regular files are opened: a FIFO or device named ``*.json``
    would block or never end. Other JSON (run settings, palettes, artifacts) is passed over; a file
    that names the results format but does not parse, or cannot be read, is an error: leaving it out
    would change the table without a word."""
    if not path.is_file():
        return False
    try:
        text = path.read_bytes()
    except OSError as e:
        raise BenchError(f"cannot read {path} ({e.strerror or e}); fix its permissions or move it away") from None
    try:
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        why = "nested too deeply to read" if isinstance(e, RecursionError) else e
        if RESULTS_FORMAT.encode() in text:
            raise BenchError(f"{path} names the results format but is not valid JSON ({why}); rerun the `bench run` "
                             "that wrote it, or move it away") from None
        return False
    return isinstance(doc, dict) and doc.get("format") == RESULTS_FORMAT


def collect(paths) -> list[Path]:
    """Files named, plus every results file under folders named."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            if not os.access(p, os.R_OK | os.X_OK):
                raise BenchError(f"cannot read the folder {p} (permission denied); fix its permissions")
            files += sorted(q for q in p.rglob("*.json") if _is_results(q))
        elif p.is_file():
            files.append(p)
        elif p.exists():
            raise BenchError(f"{p} is not a results file or folder (a device or other special file); "
                             "pass results files or folders")
        else:
            raise BenchError(f"{p} does not exist; pass results files or folders")
    if not files:
        raise BenchError(f"no results files under {', '.join(map(str, paths))}; run `bench run` first")
    seen, unique = set(), []
    for f in files:  # a file named twice (or inside a folder also named) counts once
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique
