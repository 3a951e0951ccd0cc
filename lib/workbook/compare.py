"""``workbook compare A B``: what changed between two runs of one notebook, beyond noise, and on
what machine.

Why it exists: the question after a re-run is nearly always "what changed, and on what machine";
reading two ``results.json`` by eye misses rows that moved, and a side-by-side of every figure
buries the few that did under the many that only jittered.

Rows of the same table are matched on their descriptive (non-float) fields, or on the columns the
notebook declared with ``Recorder.keys``, so the same configuration measured on two machines or two
backends lines up. A figure counts as changed when:

* its row records a p10-p90 band for it (``latency_median_ms`` with
  ``latency_p10_ms``/``latency_p90_ms``, ``fwd_bwd_ms`` with ``fwd_bwd_p10_ms``/``fwd_bwd_p90_ms``)
  in both runs and the two bands do not overlap;
* otherwise, when it moved by more than the tolerance (5 % unless told), relative to A;
* or when only one run has a value for it.

Equal figures (constants) and those within noise are hidden unless ``show_all``. Values carry the
units their key names give (:mod:`workbook.units`); B/A is given where both values have the same
sign, else B - A. :mod:`workbook.compare_html` writes the same comparison as a page with A-vs-B
figures.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from workbook import liveness
from workbook.errors import WorkbookError
from workbook.paths import shown
from workbook.provenance import hardware_label
from workbook.units import fmt, number

TOLERANCE = 0.05
CHANGED = "changed"


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_measure(v) -> bool:
    """Floats (and nulls: a NaN metric is stored as null) are measurements; text, integers, flags
    describe. Lists and mappings (histograms, say) are neither: they are left out of the
    side-by-side view."""
    return v is None or isinstance(v, (float, list, dict))


def _key(row: dict, columns: list[str] | None = None) -> tuple:
    if columns:
        return tuple((k, str(row.get(k))) for k in columns)
    return tuple(sorted((k, str(v)) for k, v in row.items() if not _is_measure(v)))


def band_keys(row: dict) -> dict[str, tuple[str, str]]:
    """``{figure: (p10 key, p90 key)}`` for the figures of ``row`` whose p10-p90 band the row
    records.

    ``x_p10_ms``/``x_p90_ms`` band ``x_ms`` and ``x_median_ms`` (and ``x_p50_ms``): the figure's
    name is the band's with ``p10`` left out, give or take one ``median`` or ``p50``."""
    out: dict[str, tuple[str, str]] = {}
    for lo in row:
        toks = lo.split("_")
        if "p10" not in toks:
            continue
        i = toks.index("p10")
        hi = "_".join(toks[:i] + ["p90"] + toks[i + 1:])
        if hi not in row:
            continue
        stem = toks[:i] + toks[i + 1:]
        for k in row:
            kt = k.split("_")
            core = [t for t in kt if t not in ("median", "p50")]
            if k not in (lo, hi) and core == stem and len(kt) - len(core) <= 1:
                out[k] = (lo, hi)
    return out


@dataclass
class Figure:
    """One figure of A and B: values, p10-p90 bands where recorded, whether it moved past noise."""

    key: str
    a: object
    b: object
    band_a: tuple[float, float] | None = None
    band_b: tuple[float, float] | None = None
    verdict: str = "equal"  # equal | noise | changed
    why: str = ""  # "beyond p10-p90", "beyond ±5%", "within p10-p90", "no value in B", ...

    @property
    def changed(self) -> bool:
        return self.verdict == CHANGED

    def ratio(self) -> str:
        """``B/A`` as ``1.5×`` where both have the same sign, else ``B - A`` with its unit."""
        a, b = self.a, self.b
        if not (_is_num(a) and _is_num(b)):
            return ""
        if (a > 0 and b > 0) or (a < 0 and b < 0):
            return f"{number(b / a)}×"
        d = b - a
        return ("+" if d >= 0 else "-") + fmt(abs(d), self.key)

    def text(self, side: str) -> str:
        """The value of A or B with its unit, and its band where recorded: ``1.23 ms [1.2-1.3]``."""
        v, band = (self.a, self.band_a) if side == "A" else (self.b, self.band_b)
        s = fmt(v, self.key) if not isinstance(v, (list, dict)) else json.dumps(v)
        if band:
            s += f" [{number(band[0])}–{number(band[1])}]"
        return s


def classify(f: Figure, tolerance: float) -> Figure:
    """Set ``f.verdict`` and ``f.why``: p10-p90 bands apart, else a move beyond ``tolerance``."""
    a, b = f.a, f.b
    na, nb = _is_num(a), _is_num(b)
    if not na and not nb:
        f.verdict, f.why = ("equal", "") if a == b else (CHANGED, "differs")
    elif not na or not nb:
        f.verdict, f.why = CHANGED, f"no value in {'A' if not na else 'B'}"
    elif a == b:
        f.verdict, f.why = "equal", ""
    elif f.band_a and f.band_b:
        apart = f.band_a[1] < f.band_b[0] or f.band_b[1] < f.band_a[0]
        f.verdict, f.why = (CHANGED, "beyond p10-p90") if apart else ("noise", "within p10-p90")
    else:
        rel = abs(b - a) / abs(a) if a else math.inf
        tol = f"±{number(tolerance * 100)}%"
        f.verdict, f.why = ((CHANGED, f"beyond {tol}") if rel > tolerance
                            else ("noise", f"within {tol}"))
    return f


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


@dataclass
class RowDiff:
    label: str  # A's descriptive fields
    other: str  # B's descriptive fields that differ from A's (tables with declared key columns)
    figures: list[Figure]
    fields: dict = field(default_factory=dict)  # A's descriptive fields, as recorded


@dataclass
class TableDiff:
    name: str
    rows: list[RowDiff] = field(default_factory=list)
    matched: int = 0
    only_a: int = 0
    only_b: int = 0

    @property
    def n_figures(self) -> int:
        return sum(len(r.figures) for r in self.rows)

    @property
    def n_changed(self) -> int:
        return sum(f.changed for r in self.rows for f in r.figures)

    def summary(self) -> str:
        s = (f"{self.n_changed} of {_n(self.n_figures, 'figure')} changed beyond noise; "
             f"{_n(self.matched, 'row')} matched")
        if self.only_a or self.only_b:
            s += f"; {self.only_a} only in A, {self.only_b} only in B"
        return s


@dataclass
class Comparison:
    dir_a: Path
    dir_b: Path
    notebook: str | None
    tolerance: float
    # (what, A, B): hardware, torch versions, parameters that differ
    context: list[tuple[str, str, str]]
    fallbacks: list[str]
    headline: list[Figure]
    tables: list[TableDiff]

    @property
    def n_changed(self) -> int:
        return sum(f.changed for f in self.headline) + sum(t.n_changed for t in self.tables)

    @property
    def nothing_changed(self) -> bool:
        return self.n_changed == 0 and not any(t.only_a or t.only_b for t in self.tables)

    def headline_summary(self) -> str:
        return (f"{sum(f.changed for f in self.headline)} of {_n(len(self.headline), 'figure')} "
                "changed beyond noise")

    def nothing_line(self) -> str:
        n = len(self.headline) + sum(t.n_figures for t in self.tables)
        rows = sum(t.matched for t in self.tables)
        return (f"nothing changed beyond noise: 0 of {_n(n, 'figure')} (headline and "
                f"{_n(len(self.tables), 'table')}, {_n(rows, 'row')} matched); --all shows them")


def _load(d: Path, side: str) -> dict:
    try:
        return json.loads((d / "results.json").read_text())
    except FileNotFoundError:
        raise WorkbookError(f"Run {side} ({shown(d)}) has no results.json: its notebook stopped "
                            "before it recorded anything, so there is nothing to "
                            "compare.") from None
    except ValueError as e:
        raise WorkbookError(f"Run {side} ({shown(d)}) has a results.json that is not JSON "
                            f"({e}).") from None


def _notebook(d: Path, res: dict) -> str | None:
    if res.get("notebook"):
        return res["notebook"]
    try:
        return json.loads((d / "run.json").read_text()).get("notebook")
    except (OSError, ValueError):
        return None


def _status(d: Path) -> str | None:
    """The run's status from its run.json (a run whose process is gone reads as killed)."""
    try:
        run = json.loads((d / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return liveness.settle(run).get("status") if isinstance(run, dict) else None


def _band(row: dict, keys: tuple[str, str] | None) -> tuple[float, float] | None:
    if keys and _is_num(row.get(keys[0])) and _is_num(row.get(keys[1])):
        return float(row[keys[0]]), float(row[keys[1]])
    return None


def _row_figures(ra: dict, rb: dict, tolerance: float) -> list[Figure]:
    bands_a, bands_b = band_keys(ra), band_keys(rb)
    in_bands = {k for pair in (*bands_a.values(), *bands_b.values()) for k in pair}
    keys = list(ra) + [k for k in rb if k not in ra]
    figs = []
    for k in keys:
        va, vb = ra.get(k), rb.get(k)
        present = [r[k] for r in (ra, rb) if k in r]
        if k in in_bands or not all(v is None or isinstance(v, float) for v in present):
            continue  # a band (shown with its figure), a descriptive field, a list or mapping
        f = Figure(k, va, vb, _band(ra, bands_a.get(k)), _band(rb, bands_b.get(k)))
        figs.append(classify(f, tolerance))
    return figs


def _table(name: str, a: dict, b: dict, tolerance: float) -> TableDiff:
    cols = a.get("keys", {}).get(name) or b.get("keys", {}).get(name)
    rows_a = a.get("tables", {}).get(name, [])
    rows_b: dict[tuple, list[dict]] = {}
    for r in b.get("tables", {}).get(name, []):
        rows_b.setdefault(_key(r, cols), []).append(r)
    n_b = sum(len(v) for v in rows_b.values())
    t = TableDiff(name)
    for ra in rows_a:
        same = rows_b.get(_key(ra, cols))
        if not same:
            continue
        rb = same.pop(0)  # repeated configurations pair up in order
        t.matched += 1
        fields = {k: v for k, v in ra.items() if not _is_measure(v)}
        label = ", ".join(f"{k}={v}" for k, v in fields.items())
        other = ""
        if cols:
            other = ", ".join(f"{k}={v}" for k, v in rb.items()
                              if not _is_measure(v) and ra.get(k) != v)
        t.rows.append(RowDiff(label, other, _row_figures(ra, rb, tolerance), fields))
    t.only_a, t.only_b = len(rows_a) - t.matched, n_b - t.matched
    return t


def _context(a: dict, b: dict) -> list[tuple[str, str, str]]:
    out = [("hardware", hardware_label(a.get("hardware", {})),
            hardware_label(b.get("hardware", {})))]
    for k in ("version", "cuda", "triton"):
        out.append((f"torch {k}", fmt(a.get("versions", {}).get(k)),
                    fmt(b.get("versions", {}).get(k))))
    pa, pb = a.get("params", {}), b.get("params", {})
    for k in sorted(set(pa) | set(pb)):
        if pa.get(k) != pb.get(k):
            out.append((f"param {k}", _plain(pa.get(k)), _plain(pb.get(k))))
    return out


def _plain(v) -> str:
    return "-" if v is None else v if isinstance(v, str) else json.dumps(v)


def diff(dir_a, dir_b, *, tolerance: float = TOLERANCE) -> Comparison:
    """Compare the runs in two folders (each with a ``results.json``); refuse runs of two
    notebooks."""
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise WorkbookError(f"--tolerance={tolerance!r} is not allowed: a relative change of at "
                            "least 0 (0.05 means 5%).")
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    a, b = _load(dir_a, "A"), _load(dir_b, "B")
    na, nb = _notebook(dir_a, a), _notebook(dir_b, b)
    if na and nb and na != nb:
        raise WorkbookError(f"Run A ({dir_a.name}) is a {na} run and run B ({dir_b.name}) a {nb} "
                            "run: compare two runs of the same notebook.")
    fallbacks = [f"fallback in {side}: {fb}" for side, d in (("A", a), ("B", b))
                 for fb in d.get("fallbacks", [])]
    ha, hb = a.get("headline", {}), b.get("headline", {})
    heads = [classify(Figure(k, ha.get(k), hb.get(k)), tolerance)
             for k in list(ha) + [k for k in hb if k not in ha]]
    names = (list(a.get("tables", {}))
             + [t for t in b.get("tables", {}) if t not in a.get("tables", {})])
    tables = [_table(n, a, b, tolerance) for n in names]
    context = _context(a, b)
    status = (_status(dir_a), _status(dir_b))
    if any(st not in (None, "ok") for st in status):  # an unfinished run's figures are partial
        context.insert(0, ("run status", status[0] or "-", status[1] or "-"))
    return Comparison(dir_a, dir_b, na or nb, tolerance, context, fallbacks, heads, tables)


def _line(f: Figure, indent: int = 6) -> str:
    line = f"{'':{indent}}{f.key:32} {f.text('A'):>22} {f.text('B'):>22} {f.ratio():>9}  {f.why}"
    return line.rstrip()


_COLUMNS = f"{'':32} {'A':>22} {'B':>22} {'B/A':>9}"


def text(c: Comparison, *, show_all: bool = False) -> str:
    """The comparison as text: context on top, then each table's summary and the rows that moved."""
    out = [f"A: {shown(c.dir_a)}", f"B: {shown(c.dir_b)}", "", f"{'':24} {'A':40} B"]
    out += [f"{what:24} {va[:40]:40} {vb[:40]}".rstrip() for what, va, vb in c.context]
    out += c.fallbacks
    if c.nothing_changed and not show_all:
        return "\n".join(out + ["", c.nothing_line()])
    if c.headline:
        out += ["", f"headline: {c.headline_summary()}"]
        shown_heads = [_line(f, 2) for f in c.headline if show_all or f.changed]
        out += [f"  {_COLUMNS}"] + shown_heads if shown_heads else []
    for t in c.tables:
        out += ["", f"table {t.name}: {t.summary()}"]
        header = [f"      {_COLUMNS}   (B/A where both have one sign, else B - A)"]
        for r in t.rows:
            figs = [f for f in r.figures if show_all or f.changed]
            if not figs:
                continue
            out += (header + [f"  {r.label}"] + ([f"    B: {r.other}"] if r.other else [])
                    + [_line(f) for f in figs])
            header = []
    return "\n".join(out)


def compare(dir_a, dir_b, *, tolerance: float = TOLERANCE, show_all: bool = False) -> str:
    """:func:`diff` as text (what ``workbook compare`` prints)."""
    return text(diff(dir_a, dir_b, tolerance=tolerance), show_all=show_all)
