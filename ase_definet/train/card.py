"""Model cards: a Markdown file beside every checkpoint, generated from its metadata."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from ase.data import chemical_symbols

from ..core.checkpoint import load_checkpoint, save_checkpoint
from .dataset import PairDataset

logger = logging.getLogger(__name__)


def write_model_card(checkpoint: Path, test_set: PairDataset | None = None,
                     device: torch.device | str = "cpu", notes: str = "") -> Path:
    """Evaluate on ``test_set`` (if given), store the test metrics in the checkpoint's
    metadata and write ``<checkpoint stem>.md``. Returns the card's path."""
    from .evaluate import REGIONS, evaluate_model, format_table

    model, meta = load_checkpoint(checkpoint, device)
    table = ""
    if test_set is not None and len(test_set):
        acc, _ = evaluate_model(model, test_set, 16, device)
        regions = REGIONS + [f"dummy_{r}" for r in REGIONS]
        meta["test_metrics"] = {g: {r: acc.mae(g, r) for r in regions} for g in acc.groups()}
        meta["n_test"] = len(test_set)
        save_checkpoint(model, checkpoint, meta)
        table = format_table(acc)
    cfg = model.config
    data = meta.get("data", {})
    lines = [
        f"# Model card: `{checkpoint.stem}`", "",
        "DefiNet (Yang et al., npj Comput. Mater. 2025) as implemented in `ase_definet`.", "",
        "## Training data", "",
        data.get("description") or "(no description recorded)", "",
        f"- teacher(s): {', '.join(data.get('teachers', [])) or 'unknown'}",
        f"- pairs: {data.get('n_train', '?')} train, {data.get('n_val', '?')} val, "
        f"{meta.get('n_test', data.get('n_test', '?'))} test",
        f"- sources: {', '.join(data.get('sources', []))}",
    ]
    if data.get("files"):
        lines.append(f"- files: {', '.join(data['files'])}")
    if meta.get("finetuned_from"):
        lines.append(f"- fine-tuned from: `{meta['finetuned_from']}`")
    if meta.get("widened"):
        w = meta["widened"]
        lines.append(f"- widened from F={w['from_hidden']} to F={w['to_hidden']} before "
                     "training (function-preserving)")
    lines += ["", "## Architecture and graph", "",
              f"- width F = {cfg.hidden}, {cfg.layer_summary()}, radial basis {cfg.n_rbf}",
              f"- cutoff D = {cfg.cutoff} Å, neighbour cap N = {cfg.max_neighbors}",
              f"- consensus activation temperature tau = {cfg.tau}",
              "- axial global channel (an extension beyond the paper): "
              + ("yes" if cfg.axial_global else "no"),
              f"- refinement stages after the first (an extension): {cfg.refine}",
              f"- elements: {', '.join(chemical_symbols[z] for z in cfg.elements)}",
              "", "## Training settings", "", "```json",
              json.dumps(meta.get("training", {}), indent=2), "```", "",
              "## Validation (EMA weights, selected epoch "
              f"{meta.get('selected_epoch', '?')})", "",
              "```json", json.dumps(meta.get("metrics", {}), indent=2), "```", ""]
    if table:
        lines += ["## Test metrics", "",
                  "Coordinate MAE in Å over atoms (vacancy placeholders excluded); A3-A6: "
                  "atoms within 3-6 Å of a defect site; `dummy`: the unrelaxed input.", "",
                  "```", table, "```", ""]
    if notes:
        lines += ["## Notes", "", notes, ""]
    card = checkpoint.with_suffix(".md")
    card.write_text("\n".join(lines))
    logger.info("model card written to %s", card)
    return card
