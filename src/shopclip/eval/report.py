"""report.md: the numbers of report.json as tables a person reads top to bottom.

Headline first (the model against every baseline, with differences), then each task;
every "n/a" or "skipped" carries its reason so an empty cell is never a mystery.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

VIEWS = ("image", "text", "fused")


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _d(v: Any) -> str:
    return "–" if v is None else f"{v:+.3f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [list(r) for r in rows]
    if not rows:
        return "_(nothing to show)_\n"
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _ci(r: dict[str, Any], key: str) -> str:
    """'[lo, hi]' of a bootstrap interval, '–' when there is none."""
    lo_hi = (r.get("ci95") or {}).get(key)
    if not lo_hi or any(v is None for v in lo_hi):
        return "–"
    return f"[{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]"


def _status(d: Any) -> str | None:
    if isinstance(d, dict) and d.get("status") in ("n/a", "skipped"):
        return f"_{d['status']}: {d.get('reason', '')}_"
    return None


def _headline(report: dict[str, Any]) -> str:
    base = report.get("baselines", {})
    header = ["metric", "model"]
    for name in base:
        header += [name, "Δ model−" + name]
    rows = []
    for key, v in report.get("headline", {}).items():
        vals = [b["headline"].get(key) for b in base.values()]
        if v is None and all(x is None for x in vals):
            continue
        row: list[Any] = [f"`{key}`", _f(v)]
        for b in base.values():
            row += [_f(b["headline"].get(key)), _d(b["delta"].get(key))]
        rows.append(row)
    return _table(header, rows)


def _retrieval(r: dict[str, Any], ks: Sequence[int]) -> str:
    k = 10 if 10 in ks else max(ks)
    header = ["task", "relevance", "hits@1", f"recall@{k}", f"precision@{k}", f"ndcg@{k}", "mrr", "map", "queries"]
    rows = []

    def add(task: str, rel: str, m: dict[str, Any]) -> None:
        rows.append([task, rel, m.get("hits@1"), m.get(f"recall@{k}"), m.get(f"precision@{k}"),
                     m.get(f"ndcg@{k}"), m.get("mrr"), m.get("map"), int(m.get("n_queries") or 0)])

    notes = []
    for task in ("t2i", "i2t"):
        s = _status(r.get(task))
        if s:
            notes.append(f"- {task}: {s}")
            continue
        for rel in ("exact", "category"):
            add(task, rel, r[task][rel])
    for v, m in r.get("similar", {}).items():
        for rel in ("exact", "category"):
            add(f"similar items ({v})", rel, m[rel])
    cq = r.get("category_query", {})
    if _status(cq):
        notes.append(f"- category-name query: {_status(cq)}")
    else:
        for v, m in cq.items():
            add(f"category name → {v}", "category", m)
    if r.get("note"):
        notes.append(f"- note: {r['note']}")
    return _table(header, rows) + ("\n" + "\n".join(notes) + "\n" if notes else "")


def _recommendation(rec: dict[str, Any]) -> str:
    k = rec.get("k")
    rows = [["category (graded)", rec["category"].get(f"hits@{k}", rec["category"].get("hits@1")),
             rec["category"].get(f"ndcg@{k}"), rec["category"].get("mrr")],
            ["same group", rec["group"].get("hits@1"), rec["group"].get(f"ndcg@{k}"), rec["group"].get("mrr")]]
    pairs = rec.get("pairs", {})
    text = ""
    if _status(pairs):
        text = f"\nCo-view/co-purchase pairs: {_status(pairs)}\n"
    else:
        rows.append(["co-view/co-purchase pairs", pairs.get(f"hits@{k}"), pairs.get(f"ndcg@{k}"), pairs.get("mrr")])
    head = _table(["relevance", f"hits@{k}" if f"hits@{k}" in rec["category"] else "hits@1", f"ndcg@{k}", "mrr"],
                  rows)
    extra = (f"\nView: {rec.get('view')}; top-{k} lists; coverage@{k} = {_f(rec.get(f'coverage@{k}'))}, "
             f"leaf diversity@{k} = {_f(rec.get(f'leaf_diversity@{k}'))}.\n")
    return head + extra + text


def _classification_rows(name: str, res: dict[str, Any]) -> list[list[Any]]:
    if _status(res):
        return [[name, "–", "–", "–", "–", "–", _status(res)]]
    rows = []
    for variant in ("probe", "zero_shot"):
        for v in VIEWS:
            m = res.get(variant, {}).get(v)
            if m:
                rows.append([name, variant.replace("_", "-"), v, m["accuracy"], m["macro_f1"], m.get("micro_f1"),
                             f"{res['n_classes']} classes, {res['n_eval']} eval, {res['n_train']} train"])
    chance = res.get("chance", {})
    rows.append([name, "chance", "–", chance.get("majority"), "–", "–", f"uniform {_f(chance.get('uniform'))}"])
    return rows


def _category(t: dict[str, Any]) -> str:
    rows = []
    for level in ("leaf", "top"):
        if level in t:
            rows += _classification_rows(level, t[level])
    text = _table(["level", "variant", "view", "accuracy", "macro-F1", "micro-F1", "data"], rows)
    method = t.get("top", {}).get("zero_shot_method")
    if method:
        text += f"\nTop-level zero-shot: {method}.\n"
    return text


def _attributes(a: dict[str, Any]) -> str:
    if _status(a):
        return _status(a) + "\n"
    header = (["attribute", "classes", "eval", "majority"] + [f"probe {v}" for v in VIEWS]
              + [f"zero-shot {v}" for v in VIEWS])
    attrs = a.get("attributes", {})
    summary = a.get("summary", {})
    parts = []
    for metric, title in (("macro_f1", "Macro-F1"), ("accuracy", "Accuracy")):
        rows = []
        for name, res in attrs.items():
            if _status(res):
                rows.append([name, "–", "–", "–", *["–"] * 6])
                continue
            rows.append([name, res["n_classes"], res["n_eval"], res.get("chance", {}).get("majority"),
                         *[res.get("probe", {}).get(v, {}).get(metric) for v in VIEWS],
                         *[res.get("zero_shot", {}).get(v, {}).get(metric) for v in VIEWS]])
        rows.append(["**mean**", "", "", "", *[summary.get("probe", {}).get(v, {}).get(metric) for v in VIEWS],
                     *[summary.get("zero_shot", {}).get(v, {}).get(metric) for v in VIEWS]])
        parts.append(f"{title} per attribute (eval rows whose value is one of the kept classes; majority = "
                     "accuracy of always answering the most common train value).\n\n" + _table(header, rows))
    sel = a.get("selection", {})
    skipped = sel.get("skipped") or {}
    if skipped:
        shown = list(skipped.items())[:25]
        lines = [f"- `{k}`: {v}" for k, v in shown]
        more = f"\n- … {len(skipped) - len(shown)} more in report.json" if len(skipped) > len(shown) else ""
        parts.append(f"Every attribute with >= {sel.get('min_values_per_class')} products on each of >= 2 values and "
                     f">= {sel.get('min_labelled_products')} labelled products (in {sel.get('counted_in', 'train')}) "
                     f"is evaluated; skipped:\n\n" + "\n".join(lines) + more + "\n")
    return "\n".join(parts)


def _matching(m: dict[str, Any]) -> str:
    parts = []
    for kind in ("synthetic", "real"):
        res = m.get(kind, {})
        title = f"**{res.get('label', kind)}**"
        if _status(res):
            parts.append(f"{title}: {_status(res)}\n")
            continue
        rows = []
        for v in (*VIEWS, "probe"):
            r = res.get(v)
            if r:
                rows.append([v, r.get("auroc"), _ci(r, "auroc"), r.get("average_precision"), r.get("f1"),
                             _ci(r, "f1"), r.get("precision"), r.get("recall"), _ci(r, "recall_wilson"),
                             r.get("precision@recall0.9"), r.get("threshold"), r.get("oracle_f1"),
                             f"{r.get('n_pos')}/{r.get('n_neg')}"])
        src = f" Threshold from {res['threshold_from']}." if res.get("threshold_from") else ""
        warn = f"\n\n**Small sample:** {res['warning']}." if res.get("warning") else ""
        parts.append(f"{title}{src}{warn}\n\n" + _table(
            ["score", "AUROC", "AUROC 95% CI", "AP", "F1 @ val threshold", "F1 95% CI", "precision", "recall",
             "recall 95% CI", "precision @ 90% recall", "threshold", "oracle F1", "pos/neg"], rows))
    parts.append("AUROC / F1 95% CI: percentile bootstrap over the eval pairs (positives and negatives resampled "
                 "separately, 1000 resamples, seeded); pairs sharing a product are treated as independent, so "
                 "the intervals are if anything too narrow, and a perfect separation bootstraps to [1, 1]. "
                 "Recall 95% CI: Wilson interval for the positives found at the threshold, which stays as wide as "
                 "the number of positives allows (5 of 5 found: [0.57, 1]).\n")
    return "\n".join(parts)


def _clustering(c: dict[str, Any]) -> str:
    if _status(c):
        return _status(c) + "\n"
    rows = []
    for method in ("kmeans", "agglomerative"):
        for v, per in c.get(method, {}).items():
            rows.append([method, v, per["leaf"]["nmi"], per["leaf"]["ari"], per["top"]["nmi"], per["top"]["ari"]])
    k = c.get("k", {})
    text = (f"{c.get('n')} products; k = {k.get('leaf')} (leaf) / {k.get('top')} (top-level).\n\n"
            + _table(["method", "view", "leaf NMI", "leaf ARI", "top NMI", "top ARI"], rows))
    g = c.get("group")
    if isinstance(g, dict):
        if _status(g):
            text += f"\nAgainst re-listing groups: {_status(g)}\n"
        else:
            grow = [[method, v, per["nmi"], per["ari"], per["v_measure"]]
                    for method in ("kmeans", "agglomerative") for v, per in g.get(method, {}).items()]
            small = " (small sample)" if g.get("small_sample") else ""
            text += (f"\nAgainst re-listing groups{small}: the {g.get('n')} products of the {g.get('k')} groups "
                     f"with >= 2 products, k = {g.get('k')}.\n\n"
                     + _table(["method", "view", "group NMI", "group ARI", "group V-measure"], grow))
    return text


def _adult(a: dict[str, Any]) -> str:
    if _status(a):
        return f"Label column `{a.get('label')}`: {_status(a)}\n"
    rows = []
    for variant in ("probe", "zero_shot"):
        per = a.get(variant, {})
        if _status(per):
            rows.append([variant, "–", _status(per), "", "", "", "", ""])
            continue
        for v, r in per.items():
            rows.append([variant, v, r.get("auroc"), _ci(r, "auroc"), r.get("average_precision"),
                         r.get("recall@precision0.99"), r.get("precision@recall0.9"), r.get("precision"),
                         r.get("recall"), r.get("f1"), _ci(r, "f1")])
    pos = a.get("positives", {})
    warn = next((r["warning"] for per in (a.get("probe", {}), a.get("zero_shot", {})) if isinstance(per, dict)
                 for r in per.values() if isinstance(r, dict) and r.get("warning")), None)
    return (f"Label column `{a.get('label')}`: {a.get('n_eval')} labelled eval products ({pos.get('eval')} positive), "
            f"{a.get('n_train')} train ({pos.get('train')} positive), {a.get('n_tune')} tune."
            + (f"\n\n**Small sample:** {warn}." if warn else "") + "\n\n"
            + _table(["variant", "view", "AUROC", "AUROC 95% CI", "AP", "recall @ 99% precision",
                      "precision @ 90% recall", "precision", "recall", "F1", "F1 95% CI"], rows))


def _probe_c(report: dict[str, Any]) -> str:
    reg = report["tasks"].get("probe_regularisation", {})
    cs = ", ".join(f"{v} {c}" for v, c in reg.get("C", {}).items())
    return f"{cs} ({reg.get('rule', '')})"


def _whole_catalog(report: dict[str, Any]) -> list[str]:
    """The headline protocol: every catalog product a candidate (eval/whole_catalog.py)."""
    w = report.get("whole_catalog")
    if not w:
        return []
    rows = [[d, *(_f(w[d].get(m)) for m in ("hits@1", "hits@5", "hits@10", "mrr", "ndcg@10"))]
            for d in ("t2i", "i2t") if isinstance(w.get(d), dict)]
    photos = report["data"].get("identical_photos", {})
    return ["", f"## Whole catalog (model): {w['n_queries']} {w['split']} queries among all {w['n_candidates']} "
            "products", "", _table(["direction", "HITS@1", "HITS@5", "HITS@10", "MRR", "NDCG@10"], rows),
            f"Similar items, same-leaf precision@10 among all photos: image {_f(w.get('i2i_same_leaf_precision@10'))}, "
            f"fused {_f(w.get('fused_same_leaf_precision@10'))}. Query text: {w.get('text')}. "
            f"{photos.get('merged_products', 0)} products in {photos.get('merged_groups', 0)} groups were merged "
            f"because their photos are byte-identical ({photos.get('groups_across_splits', 0)} such groups span "
            "splits); a twin counts as the same product.", ""]


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report.md."""
    m, cat, cfg = report["model"], report["catalog"], report["config"]
    sizes = report["data"]["sizes"]
    t = report["tasks"]
    lines = [
        f"# shopclip evaluation: `{m.get('ref')}`",
        "",
        f"- **model**: `{m.get('name')}` ({'trained' if m.get('trained') else 'UNTRAINED heads'}), "
        f"resolved `{m.get('resolved')}`, fingerprint `{str(m.get('fingerprint'))[:12]}`",
        f"- **catalog**: `{cat['path']}` (sha1 `{cat['sha1'][:12]}`, {cat['n_products']} products)",
        f"- **split**: `{report['split']}` — {sizes['eval']} eval products; probes fitted on {sizes['train']} "
        f"train products; thresholds on {sizes['tune']} tune products; {sizes['syn_eval']} + {sizes['syn_tune']} "
        "synthetic re-listings",
        f"- **wall time**: {report.get('timing', {}).get('total_s', 0):.0f} s",
        "",
        "## Model vs. baselines",
        "",
        "Δ = model − baseline (positive: the model is better, for every metric here). "
        "`–` = the metric does not apply (e.g. a tower alone has no text-image space).",
        "",
        _headline(report),
    ]
    for name, b in report.get("baselines", {}).items():
        lines.append(f"- `{name}`: {b['model'].get('note') or b['model'].get('ref')}"
                     + ("" if b.get("aligned") or b.get("kind") != "dual" else " (heads not aligned)"))
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    plots = report.get("plots", {})
    lines += _whole_catalog(report)
    lines += ["", "## Retrieval (model)", "", _retrieval(report["retrieval"], cfg["ks"])]
    if "recall_curves" in plots:
        lines += [f"![recall@k]({plots['recall_curves']})", ""]
    lines += ["## Recommendation (model)", "", _recommendation(report["recommendation"])]
    lines += ["## Category classification (model)", "", _category(t["category"])]
    if "confusion" in plots:
        lines += [f"![confusion]({plots['confusion']})", ""]
    lines += ["## Attribute extraction (model)", "", _attributes(t["attributes"])]
    lines += ["## Product matching (model)", "", _matching(t["matching"])]
    lines += ["## Product clustering (model)", "", _clustering(t["clustering"])]
    if "map" in plots:
        lines += [f"![t-SNE map]({plots['map']})", ""]
    lines += ["## Adult-product recognition (model)", "", _adult(t["adult"])]
    if "examples" in plots:
        lines += ["## Example queries (model)", "", "Frames: green = same product, orange = same leaf category.",
                  "", f"![examples]({plots['examples']})", ""]
    d = report["data"]
    lines += ["## How this was measured", ""]
    lines += [f"- **{k}**: {d[k]}" for k in ("eval", "train", "tune", "text", "fused", "synthetic", "whole_catalog")
              if k in d]
    lines += ["- **relevance**: exact = same product (id or `group`); category = graded, 2 same leaf path, "
              "1 same parent path. Queries without a relevant item are skipped and counted.",
              f"- **probes**: standardised features + multinomial logistic regression (L-BFGS); C per view: "
              f"{_probe_c(report)}.",
              f"- **seed**: {cfg['seed']}; cache: `{d.get('cache')}`"]
    if d.get("pairs"):
        pr = d["pairs"]
        lines.append(f"- **co-view/co-purchase pairs**: `{pr['path']}` (sha1 `{pr['sha1'][:12]}`, {pr['n_pairs']} pairs)")
    lines.append("")
    return "\n".join(lines)


__all__ = ["render_markdown"]
