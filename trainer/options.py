"""Options that several commands share, each declared once, in small dataclasses combined per command (as
transformers' `HfArgumentParser(ModelArguments, DataTrainingArguments, ...)` does). The training config inherits
them; the other commands add them to their parsers with `add_options`. `--model` is serving/loading.py's.

A spelling a command used before (`--batch_size`, `--token`, `--private`) still works for now, hidden from
`--help`, and says what replaces it.
"""

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field


def option(default, help: str, **argparse_kwargs):
    """A dataclass field that is also a command-line flag: its default, its help, and argparse extras (choices,
    `flag` for a boolean's `--no_X` spelling)."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class InferenceOptions:
    per_device_eval_batch_size: int = option(64, "Images per forward pass, per process.")
    num_workers: int = option(2, "DataLoader worker processes that decode images, per process.")


@dataclass
class SeedOption:
    seed: int = option(42, "Seed of every random draw: the validation split, the head's initialisation and the data "
                           "order in training; the cross-fitting folds and the bootstrap in recalibration.")


@dataclass
class ExtractionOption:
    extraction_engine: str = option(
        "auto", "What runs the frozen backbone outside training (the cached views, the guard's and the test set's "
        "passes): onnxruntime (the backbone exported to ONNX once and kept in the export cache; features within "
        "1e-6 of eager), eager (PyTorch, channels_last), or auto: onnxruntime on a CPU in fp32, eager on a GPU or in "
        "mixed precision.", choices=["auto", "eager", "onnxruntime"])


@dataclass
class HubOptions:
    hub_token: str | None = option(None, "Hub token (default: HF_TOKEN or the saved `hf auth login`).")
    hub_private_repo: bool = option(False, "Create the Hub repo as private.")


@dataclass
class GuardOption:
    guard_false_refusal: float = option(
        0.005, "The share of real X-rays the not-an-X-ray guard may refuse (alpha): its limit is the conformal "
        "quantile of calibration X-rays' distances, so on average at most this share of X-rays like them is refused; "
        "with fewer than 1/alpha - 1 calibration images the rate that can be guaranteed is 1/(n+1), and that is "
        "the one stated.")


# an earlier spelling -> the option that replaced it
RENAMED = {"--batch_size": "--per_device_eval_batch_size", "--token": "--hub_token", "--private": "--hub_private_repo"}


class Renamed(argparse.Action):
    """An earlier spelling of an option: sets the new option and says what replaces it."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is now {RENAMED[option_string]}; the old spelling will go.", file=sys.stderr)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def add_options(parser: argparse.ArgumentParser, *groups: type) -> argparse.ArgumentParser:
    """One flag per field of each dataclass in `groups`; a boolean that defaults to True becomes `--no_X`. Each
    option's earlier spelling (RENAMED) is accepted too, hidden from --help."""
    for group in groups:
        own = group.__dict__.get("__annotations__", {})
        # the group's own options first, then those it inherits (the shared ones), each in declaration order
        for config_field in sorted(dataclasses.fields(group), key=lambda f: f.name not in own):
            meta = dict(config_field.metadata)
            help_text = f"{meta.pop('help')} (default: {config_field.default})"
            flag = meta.pop("flag", f"--{config_field.name}")
            boolean = config_field.type is bool or config_field.type == "bool"
            if boolean:
                action = "store_false" if config_field.default else "store_true"
                parser.add_argument(flag, dest=config_field.name, action=action, help=help_text)
            else:
                value_type = {int: int, float: float}.get(config_field.type, str)
                parser.add_argument(flag, type=value_type, default=config_field.default, help=help_text, **meta)
            for old, new in RENAMED.items():
                if new == flag:
                    parser.add_argument(old, dest=config_field.name, action=Renamed, help=argparse.SUPPRESS,
                                        **({"nargs": 0} if boolean else {"type": value_type}))
    return parser
