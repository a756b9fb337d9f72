"""The ``definet`` command line.

    definet demo                                  # relax a built-in defective MoS2 cell
    definet relax defective.cif --pristine host.cif -o relaxed.cif
    definet relax host.cif --vacancies 3 7 --substitute 0:W -o relaxed.extxyz
    definet info default
    definet generate ...   definet train ...   definet finetune ...   definet evaluate ...
    definet pairs 'runs/*/vasprun.xml' --pristine host.cif -o my_pairs.db
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import nullcontext
from dataclasses import MISSING, fields

import numpy as np

from .core.fileio import atomic_path, format_of, write_structure

logger = logging.getLogger("ase_definet.cli")


class _Once(argparse.Action):
    """Store an option's value; the option given twice is an error (rather than the
    last one silently winning over what the user also asked for)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_given_once", set())
        if self.dest in given:
            parser.error(f"{option_string} was given twice; give all its values after "
                         f"one {option_string}")
        given.add(self.dest)
        setattr(namespace, self.dest, values)


def _parse_substitutions(items: list[str]) -> dict[int, str]:
    subs: dict[int, str] = {}
    for item in items:
        site, _, element = item.partition(":")
        if not element or not site.strip().lstrip("-").isdigit():
            raise ValueError(f"--substitute expects SITE:ELEMENT (e.g. 0:W), got {item!r}")
        if int(site) in subs:
            raise ValueError(f"--substitute: site {int(site)} is substituted twice "
                             f"({int(site)}:{subs[int(site)]} and {item.strip()}); give "
                             "each site once")
        subs[int(site)] = element.strip()
    return subs


def _read_inputs(args: argparse.Namespace):
    """(atoms, defects, pristine) from INPUT, --pristine, --vacancies and --substitute."""
    from ase.io import read

    defects = None
    if args.vacancies or args.substitute:  # checked before anything is read
        defects = {"vacancies": args.vacancies or [],
                   "substitutions": _parse_substitutions(args.substitute or [])}
    atoms = read(args.input)
    pristine = read(args.pristine) if args.pristine else None
    return atoms, defects, pristine


def cmd_relax(args: argparse.Namespace) -> int:
    from .core.validate import check_output
    from .relaxer import DefiNetRelaxer

    check_output(args.output, args.format)  # before any work
    if args.trajectory:
        check_output(args.trajectory, "traj")
    atoms, defects, pristine = _read_inputs(args)
    # the trajectory goes to a temporary file, renamed only on success: a failed run
    # leaves an existing file of that name as it was
    with (atomic_path(args.trajectory) if args.trajectory else nullcontext()) as traj, \
            DefiNetRelaxer(atoms, defects=defects, pristine=pristine, model=args.model,
                           device=args.device, logfile=None if args.quiet else "-",
                           trajectory=str(traj) if traj else None, stages=args.stages,
                           per_layer=args.per_layer, marker_free=args.marker_free) as relaxer:
        relaxer.run()
        result = relaxer.atoms
        if (args.format or format_of(args.output)) == "extxyz":
            result = result.copy()  # per-atom uncertainty (Å) as arrays of the file
            result.arrays["uncertainty"] = relaxer.uncertainty
            result.arrays["bound90"] = relaxer.bound90
        write_structure(args.output, result, args.format)
    logger.info("wrote %s (%d atoms; %s); mean uncertainty %.4f Å, largest %.4f Å",
                args.output, len(relaxer.atoms), relaxer.todict()["defects"],
                relaxer.uncertainty.mean(), relaxer.uncertainty.max())
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from ase.io import read

    from .plot import plot_comparison, plot_field, reference_in_host_order
    from .relaxer import DefiNetRelaxer

    atoms, defects, pristine = _read_inputs(args)
    relaxer = DefiNetRelaxer(atoms, defects=defects, pristine=pristine,
                             model=args.model, device=args.device, logfile=None)
    relaxer.run()
    s = relaxer.structure
    predicted = relaxer.layers[-1][s.spec.site_index(s.n_sites)]
    ref = reference_in_host_order(s, read(args.reference)) if args.reference else None
    if args.compare:
        if ref is None:
            raise ValueError("--compare needs --reference (the relaxed reference structure)")
        plot_comparison(s, predicted, ref, args.output)
    else:
        unc = None
        if args.color == "uncertainty":  # the user's atom order -> host order
            per_site = np.zeros(s.n_sites)
            per_site[s.atom_sites] = relaxer.uncertainty
            unc = per_site[s.spec.site_index(s.n_sites)]
        plot_field(s, predicted, args.output, reference=ref, uncertainty=unc)
    logger.info("wrote %s", args.output)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .core.checkpoint import read_metadata, resolve_weights_path

    path = resolve_weights_path(args.weights)
    cfg, meta = read_metadata(path)
    if args.json:
        from ase.data import chemical_symbols

        d = cfg.to_dict()
        d["elements"] = [chemical_symbols[z] for z in d["elements"]]
        print(json.dumps({"path": str(path), "config": d, "metadata": meta}, indent=2))
    else:
        print(info_summary(path, cfg, meta))
    return 0


def info_summary(path, cfg, meta: dict) -> str:
    """A checkpoint in a few lines: model, graph, elements, hosts, data, test metrics."""
    from ase.data import chemical_symbols

    from .core.hosts import get_host, host_names

    symbols = [chemical_symbols[z] for z in cfg.elements]
    hosts = [n for n in host_names()
             if set(get_host(n).unit_cell.numbers.tolist()) <= set(cfg.elements)]
    extras = ", axial global channel" if cfg.axial_global else ""
    data = meta.get("data")
    description = data.get("description") if isinstance(data, dict) else data
    lines = [f"path      {path}",
             f"model     DefiNet F={cfg.hidden}, {cfg.layer_summary()}{extras}",
             f"graph     cutoff {cfg.cutoff:g} Å, at most {cfg.max_neighbors} neighbours",
             f"elements  {' '.join(symbols)}",
             f"hosts     {' '.join(hosts) or '-'} (built-in hosts of these elements)"]
    if meta.get("weights_version"):
        lines.insert(1, f"version   {meta['weights_version']}")
    if description:
        lines.append(f"data      {' '.join(str(description).split())[:200]}")
    counts = [f"{k[2:]} {meta[k]}" for k in ("n_train", "n_val", "n_test") if k in meta]
    if counts:
        lines.append(f"pairs     {', '.join(counts)}")
    metrics = meta.get("test_metrics")
    if isinstance(metrics, dict) and metrics:
        lines.append("")
        lines.append(f"{'test MAE, Å':<14} {'all':>7} {'Dummy':>7} {'A3':>7} {'Dummy':>7} "
                     f"{'ratio':>6}")
        for group, m in metrics.items():
            if not isinstance(m, dict) or "all" not in m:
                continue
            ratio = m["all"] / m["dummy_all"] if m.get("dummy_all") else float("nan")
            lines.append(f"{group:<14} {m['all']:7.4f} {m.get('dummy_all', float('nan')):7.4f} "
                         f"{m.get('A3', float('nan')):7.4f} "
                         f"{m.get('dummy_A3', float('nan')):7.4f} {ratio:6.3f}")
    elif isinstance(meta.get("metrics"), dict):
        lines.append("metrics   " + ", ".join(f"{k} {v:.4g}" for k, v in meta["metrics"].items()
                                              if isinstance(v, (int, float))))
    lines.append("")
    lines.append("(definet info --json for everything; the model card NAME.md for the rest)")
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(model=args.model, device=args.device, output=args.output, plot=args.plot)
    return 0


def _add_structure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="defective structure (a built-in host's, or with "
                   "--pristine), or the host with --vacancies/--substitute")
    p.add_argument("--pristine", action=_Once, help="pristine host of a defective INPUT")
    p.add_argument("--vacancies", type=int, nargs="+", action=_Once, metavar="SITE",
                   help="vacant host site indices, e.g. 3 7")
    p.add_argument("--substitute", nargs="+", action=_Once, metavar="SITE:ELEMENT",
                   help="substitutions on host sites, e.g. 0:W 5:Se")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", action=_Once,
                   help="weights name or checkpoint path (default: default)")
    p.add_argument("--device", action=_Once,
                   help="torch device (default: $DEFINET_DEVICE, else CUDA if present, "
                   "else CPU)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="definet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"definet {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("relax", help="relax one defect structure")
    _add_structure_args(r)
    r.add_argument("-o", "--output", required=True, action=_Once,
                   help="output file (any ase.io format, from its extension or --format)")
    r.add_argument("--format", action=_Once,
                   help="ase.io format of the output (default: from its name)")
    _add_model_args(r)
    r.add_argument("--trajectory", action=_Once,
                   help="write the input, the prediction (and with --per-layer every "
                   "layer) to this .traj")
    r.add_argument("--per-layer", action="store_true",
                   help="log (and write to the trajectory) every network layer")
    r.add_argument("--marker-free", action="store_true",
                   help="an INPUT of no built-in host and no --pristine: predict with every "
                   "atom marked pristine (vacancies invisible to the network)")
    r.add_argument("-q", "--quiet", action="store_true", help="no log")
    r.add_argument("--stages", type=int, action=_Once,
                   help="run only the first STAGES refinement stages of the weights: "
                   "faster, less accurate (default all)")
    r.set_defaults(func=cmd_relax)

    i = sub.add_parser("info", help="summarise a checkpoint: model, graph, elements, "
                       "hosts, test metrics")
    i.add_argument("weights", nargs="?", default="default",
                   help="weights name or checkpoint path (default: default)")
    i.add_argument("--json", action="store_true",
                   help="print the full configuration and metadata as JSON")
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("demo", help="relax a built-in defective MoS2 cell and show what moved")
    _add_model_args(d)
    d.add_argument("-o", "--output", help="also write the relaxed structure here")
    d.add_argument("--plot", help="also draw the displacement field to this PNG")
    d.set_defaults(func=cmd_demo)

    from .data.generate import build_parser as generate_parser

    generate_parser(sub.add_parser("generate", help="label defect pairs with a teacher"))
    sub.choices["generate"].set_defaults(func=_run_generate)
    from .data.relabel import add_command as add_relabel

    add_relabel(sub)
    pl = sub.add_parser("plot", help="draw the predicted displacement (or error) field")
    _add_structure_args(pl)
    pl.add_argument("--reference", action=_Once,
                    help="relaxed reference structure: draw the error field")
    pl.add_argument("--compare", action="store_true",
                    help="with --reference: three panels (reference and predicted "
                    "displacements, error) on one scale")
    pl.add_argument("--color", choices=("length", "uncertainty"), default="length",
                    help="colour the arrows by their length or by the predicted per-atom "
                    "uncertainty (default: %(default)s)")
    pl.add_argument("-o", "--output", required=True, action=_Once, help="PNG file")
    _add_model_args(pl)
    pl.set_defaults(func=cmd_plot)

    s = sub.add_parser("summary", help="count the pairs of ase.db data files")
    s.add_argument("paths", nargs="+", help="ase.db files or folders")
    s.add_argument("--verify", type=int, default=0, metavar="N",
                   help="also recompute CHGNet forces at the relaxed positions of N random "
                   "converged pairs (needs the 'teacher' extra); exit 1 if any exceeds "
                   "--limit")
    s.add_argument("--limit", type=float, default=0.03, help="force limit of --verify, eV/Å")
    s.add_argument("--seed", type=int, default=0, help="seed of the --verify draw")
    s.add_argument("--teacher", default="chgnet-stock",
                   help="teacher name of the --verify calculator (default: CHGNet's own, "
                   "unpatched calculator)")
    s.set_defaults(func=_run_summary)
    pr = sub.add_parser("pairs", help="convert relaxation runs (VASP, ASE trajectories) into "
                        "an ase.db of training pairs")
    pr.add_argument("runs", nargs="+", help="vasprun.xml or OUTCAR files, folders with "
                    "POSCAR+CONTCAR, .traj files, or folders/quoted globs of them")
    pr.add_argument("--pristine", nargs="+", required=True, metavar="HOST",
                    help="pristine host(s): one file, or one per material")
    pr.add_argument("-o", "--output", required=True, help="ase.db file (appended to; runs "
                    "already in it are not written again)")
    pr.add_argument("--format", dest="fmt", default="auto", choices=["auto", "runs"],
                    help="runs: also read .extxyz/.xyz files in folders as one run each")
    pr.add_argument("--fmax", type=float, help="eV/Å: skip trajectories whose last forces "
                    "exceed it (their files state no criterion)")
    pr.add_argument("--val-fraction", type=float, default=0.0, help="share of new pairs "
                    "marked split=val (default 0: no split)")
    pr.add_argument("--test-fraction", type=float, default=0.0, help="share marked split=test")
    pr.add_argument("--seed", type=int, default=0, help="seed of the split")
    pr.set_defaults(func=_run_pairs)
    _add_training_commands(sub)
    return p


def _run_pairs(args: argparse.Namespace) -> int:
    from .data.runs import write_runs_db

    n, report = write_runs_db(args.runs, args.pristine, args.output, fmt=args.fmt,
                              fmax=args.fmax, val_fraction=args.val_fraction,
                              test_fraction=args.test_fraction, seed=args.seed)
    print(f"{report.summary()}; wrote {n} pair(s) to {args.output}")
    return 0 if report.accepted or not report.skipped else 1


def _run_summary(args: argparse.Namespace) -> int:
    from .data.summary import summarize
    from .train.dataset import expand_paths

    paths = expand_paths(args.paths)
    print(summarize(paths))
    if args.verify <= 0:
        return 0
    from .data.teacher import get_teacher
    from .data.verify import format_checks, relaxed_forces

    checks = relaxed_forces(paths, args.verify, get_teacher(args.teacher), seed=args.seed)
    print(format_checks(checks, args.limit))
    return 0 if max(c.max_force for c in checks) < args.limit else 1


def _run_generate(args: argparse.Namespace) -> int:
    from .data.generate import run_from_args

    run_from_args(args)
    return 0


def _add_training_commands(sub) -> None:
    try:
        from .train.cli import add_commands
        from .train.trainer import TrainConfig
    except ImportError:  # training module not available
        return
    add_commands(sub)
    defaults = {f.name: (f.default_factory() if f.default_factory is not MISSING
                         else f.default) for f in fields(TrainConfig)}
    for name in ("train", "finetune", "evaluate", "card"):
        if name in sub.choices:
            _show_defaults(sub.choices[name], defaults)


def _show_defaults(parser: argparse.ArgumentParser, defaults: dict) -> None:
    """Append ``(default: X)`` to each option's help: its own default, else (for the
    training options, None so that a --config file or a resume can set them) the
    TrainConfig default."""
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        value = action.default
        if value is None or value is argparse.SUPPRESS:
            value = defaults.get(action.dest)
        if value is None or value is False or value == {} or value == []:
            continue
        help_text = action.help or ""
        if "default" in help_text:
            continue
        shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        action.help = f"{help_text} (default: {shown})".strip()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # the reader went away (`definet info | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes
        return 1
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"definet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
