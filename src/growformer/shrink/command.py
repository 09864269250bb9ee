"""The ``growformer shrink`` command: argument parsing around ``shrink_folder``."""

from __future__ import annotations

import argparse

from growformer.data import DEFAULT_TEXT_FIELD
from growformer.shrink.calibration import DEFAULT_CALIB_TOKENS
from growformer.shrink.folder import shrink_folder
from growformer.shrink.target import ShrinkError

# CLI flag → ModelConfig field.
SHRINK_FLAGS = {
    "--layers": "n_layers",
    "--hidden": "hidden",
    "--heads": "n_heads",
    "--kv-heads": "n_kv_heads",
    "--ffn": "ffn",
    "--max-seq-len": "max_seq_len",
}


def add_shrink_command(sub: argparse._SubParsersAction) -> None:
    """Register ``shrink`` on the ``growformer`` parser."""
    p = sub.add_parser(
        "shrink",
        help="initialize a smaller model from a larger one (weight subcloning)",
        description="Keep the most important hidden dimensions, layers, heads and FFN neurons "
        "of SRC, measured on calibration data, and write the smaller model to DST with "
        "subclone_report.json beside it.",
    )
    p.add_argument(
        "src",
        metavar="SRC",
        help="a growformer or Hugging Face (GPT-2, Llama, Qwen2, Mistral, BERT) folder",
    )
    p.add_argument("dst", metavar="DST")
    for flag, field in SHRINK_FLAGS.items():
        p.add_argument(flag, dest=field, type=int, metavar="N", help=f"target {field}")
    p.add_argument(
        "--data",
        metavar="PATH",
        help="calibration data: text, .jsonl or .bin token files (default: the default corpus)",
    )
    p.add_argument(
        "--text-field",
        default=DEFAULT_TEXT_FIELD,
        metavar="NAME",
        help=f"the field of each JSON line that holds its text (default {DEFAULT_TEXT_FIELD!r})",
    )
    p.add_argument(
        "--calib-tokens",
        type=int,
        default=DEFAULT_CALIB_TOKENS,
        metavar="N",
        help=f"calibration tokens (default {DEFAULT_CALIB_TOKENS})",
    )
    p.add_argument(
        "--keep-layers",
        metavar="I,J,...",
        help="source layers to keep, overriding block removal (as many as --layers)",
    )
    p.add_argument(
        "--no-rescale",
        dest="rescale",
        action="store_false",
        help="do not rescale readers (and post-norm gains) for the smaller hidden size",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    p.set_defaults(run=_cmd_shrink)


def _cmd_shrink(args: argparse.Namespace) -> int:
    sizes = {f: getattr(args, f) for f in SHRINK_FLAGS.values() if getattr(args, f) is not None}
    if not sizes:
        raise ShrinkError(f"give at least one size to shrink: {', '.join(SHRINK_FLAGS)}")
    child = shrink_folder(
        args.src,
        args.dst,
        sizes,
        data=args.data,
        text_field=args.text_field,
        calib_tokens=args.calib_tokens,
        keep_layers=_layer_list(args.keep_layers),
        rescale=args.rescale,
        overwrite=args.overwrite,
    )
    print(child.report.format())
    used = child.report.calibration_tokens
    if used is not None and used < args.calib_tokens:
        print(f"note: the calibration data gave {used} of the {args.calib_tokens} tokens asked for")
    print(f"wrote {args.dst}")
    return 0


def _layer_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ShrinkError(
            f"--keep-layers must be comma-separated layer indices like 0,3,5; got {text!r}"
        ) from None
