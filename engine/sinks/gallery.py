"""The report's gallery of saved examples: per perturbation and level, clean | perturbed | amplified difference.

Reads what ``save_examples`` wrote (engine/store/examples.py). Each cell (one perturbation at one level)
shows at most ``PER_CELL`` examples, misclassified ones first, each as three tiny PNGs embedded as
``data:`` URIs (no upscaling in the file: the browser enlarges them pixelated), with the true and the
predicted label. At most ``MAX_CELLS`` cells per run, so the page stays small; the rest are counted.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from engine.store import examples

PER_CELL = 8
MAX_CELLS = 40
CSS = (".gal{display:flex;flex-wrap:wrap;gap:6px;margin:.3em 0 1.2em}.gal figure{margin:0;font-size:11px;"
       "text-align:center}.gal img{width:56px;height:56px;image-rendering:pixelated;border:1px solid #ccc;"
       "margin:0 1px}.gal .bad{color:#b00}")


def png_uri(img: np.ndarray) -> str:
    """A C×H×W float image in [0, 1] as a base64 PNG ``data:`` URI (gray for 1 channel, RGB for 3)."""
    a = np.clip(np.rint(np.asarray(img, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
    a = a[0] if a.shape[0] == 1 else np.moveaxis(a[:3], 0, -1)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def amplified(x: np.ndarray, clean: np.ndarray) -> tuple[np.ndarray, float]:
    """The difference scaled so its largest pixel reaches the edge of [0, 1] around mid-grey, and the factor."""
    d = x.astype(np.float64) - clean
    peak = float(np.abs(d).max())
    factor = 0.5 / peak if peak > 0 else 1.0
    return 0.5 + d * factor, factor


def _figure(x: np.ndarray, clean: np.ndarray, row: dict[str, object]) -> str:
    diff, factor = amplified(x, clean)
    ok = bool(row["correct"])
    title = f"{row['model']} · sample {row['sample_id']}"
    return (f"<figure title='{html.escape(title)}'><img alt='clean' src='{png_uri(clean)}'>"
            f"<img alt='perturbed' src='{png_uri(x)}'><img alt='difference ×{factor:.3g}' src='{png_uri(diff)}'>"
            f"<figcaption>{html.escape(str(row['model']))} #{row['sample_id']}<br>true {row['label']} → "
            f"<span class='{'' if ok else 'bad'}'>pred {row['pred']}</span> · diff ×{factor:.3g}</figcaption>"
            "</figure>")


def _cells(keys: pa.Table) -> list[tuple[str, float]]:
    pairs = zip(keys["perturbation"].to_pylist(), keys["level"].to_pylist(), strict=True)
    return sorted(set(pairs))


def _pick(keys: pa.Table, pert: str, level: float) -> np.ndarray:
    """Rows of one cell: misclassified first, then by model and sample; at most ``PER_CELL``."""
    mask = pc.and_(pc.equal(keys["perturbation"], pert), pc.equal(keys["level"], level))
    idx = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
    correct = keys["correct"].to_numpy(zero_copy_only=False)[idx]
    sid = keys["sample_id"].to_numpy()[idx]
    models = np.asarray(keys["model"].to_pylist(), dtype=object)[idx]
    order = sorted(range(len(idx)), key=lambda i: (bool(correct[i]), str(models[i]), int(sid[i])))
    return idx[order[:PER_CELL]]


def run_gallery(out_dir: str | Path, task_ids: Sequence[str] | None = None, label: str | None = None) -> str:
    """The gallery of one run folder as HTML ('' when it saved no examples)."""
    if not (Path(out_dir) / "results").is_dir():  # a run killed before its first task: nothing to show
        return ""
    ex = examples.load(out_dir, task_ids=task_ids)
    if not len(ex):
        return ""
    keys, x, clean = ex.keys, ex.x.numpy(), ex.clean.numpy()
    cells = _cells(keys)
    parts = []
    for pert, level in cells[:MAX_CELLS]:
        rows = _pick(keys, pert, level)
        figs = "".join(_figure(x[i], clean[i], keys.slice(int(i), 1).to_pylist()[0]) for i in rows)
        parts.append(f"<h4>{html.escape(pert)} at level {level:g} ({len(rows)} shown)</h4><div class='gal'>{figs}"
                     "</div>")
    more = f"<p>{len(cells) - MAX_CELLS} more perturbation × level cell(s) not shown.</p>" \
        if len(cells) > MAX_CELLS else ""
    head = f"<h3>{html.escape(label)}</h3>" if label else ""
    return head + "".join(parts) + more


def gallery_html(runs: Sequence[tuple[str | None, Path, Sequence[str] | None]]) -> str:
    """The report's section for (label, out_dir, task ids) of each run; '' when none saved examples."""
    bodies = [b for label, out, tids in runs if (b := run_gallery(out, tids, label if len(runs) > 1 else None))]
    if not bodies:
        return ""
    return (f"<style>{CSS}</style><h2>Examples</h2><p>Saved examples (<code>save_examples</code>): per perturbation "
            f"and level at most {PER_CELL}, misclassified first; each shows the clean input, the perturbed input and "
            "their difference amplified around mid-grey (factor under it).</p>" + "".join(bodies))
