"""`definet train` / `definet finetune` take their training flags from TrainConfig's
fields: every field is a flag or listed as none, with the field's type, help and
default."""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from ase_definet.cli import build_parser
from ase_definet.train.cli import DATA_FLAGS, NOT_FLAGS, TRAIN_FLAGS, flag_name, settings_given
from ase_definet.train.trainer import TrainConfig

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
HINTS = typing.get_type_hints(TrainConfig)


def _command(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def test_every_field_is_a_flag_or_listed_as_none():
    groups = [set(TRAIN_FLAGS), set(DATA_FLAGS), set(NOT_FLAGS)]
    assert sum(map(len, groups)) == len(FIELDS) and set().union(*groups) == set(FIELDS)
    assert all(FIELDS[name].metadata.get("help") for name in FIELDS)


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_flags_follow_the_fields(command):
    actions = {a.dest: a for a in _command(command)._actions}
    for name in TRAIN_FLAGS + DATA_FLAGS:
        action, f = actions[name], FIELDS[name]
        assert action.option_strings == [flag_name(name)]
        assert action.default is None  # a --config file or a resumed run may set it
        kind = HINTS[name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        base = args[0] if typing.get_origin(kind) in (typing.Union, type(int | None)) else kind
        if base is bool:
            assert action.nargs == 0 and action.const is True
        elif typing.get_origin(base) in (list, dict):
            assert action.nargs == "+"
        else:
            assert action.type is base
        if "choices" in f.metadata:
            assert list(action.choices) == list(f.metadata["choices"])
        if name in TRAIN_FLAGS:
            assert f.metadata["help"] in action.help
        value = _default(f)
        if value not in (None, False, {}, []) and "default" not in f.metadata["help"]:
            shown = " ".join(map(str, value)) if isinstance(value, list) else value
            assert action.help.endswith(f"(default: {shown})")
    assert "init_from" in actions if command == "finetune" else "init_from" not in actions


def test_flags_give_exactly_the_settings_named():
    parse = build_parser().parse_args
    assert settings_given(parse(["train"])) == {}
    args = parse(["train", "--epochs", "5", "--lr", "3e-4", "--compile", "--schedule",
                  "cosine", "--material-weights", "hBN=3", "--train-stage", "-1",
                  "--data", "a.db", "b.db", "--description", "x"])
    given = settings_given(args)
    assert given == {"epochs": 5, "lr": 3e-4, "compile": True, "schedule": "cosine",
                     "material_weights": {"hBN": 3.0}, "train_stage": -1,
                     "data": ["a.db", "b.db"], "description": "x"}
    assert type(given["epochs"]) is int and type(given["lr"]) is float
    cfg = TrainConfig(**given)
    assert (cfg.epochs, cfg.batch_size) == (5, 8)  # the rest: the fields' defaults
    with pytest.raises(SystemExit):
        parse(["train", "--schedule", "linear"])
