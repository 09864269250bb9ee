"""The ``growformer`` command: init, grow, verify, info; train, demo, plot, generate."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from functools import partial

import torch

from growformer.compare import Difference, fixed_batch, logit_difference
from growformer.config import SIZE_FIELDS, ConfigError, ModelConfig, seed_arg
from growformer.data import DataError
from growformer.expand import LAYER_INITS, PLACEMENTS, WIDTH_INITS, GrowthError, GrowthOptions, grow
from growformer.hf import grow_storable, is_hf_folder, read_folder, write_folder
from growformer.model import Transformer, check_fits_in_memory, model_from_state
from growformer.model_io import CheckpointError, check_destination, load_model, save_model
from growformer.shrink.command import add_shrink_command
from growformer.shrink.target import ShrinkError
from growformer.train.commands import add_commands
from growformer.train.config import TrainConfigError
from growformer.train.select import add_select_command

# CLI flag → ModelConfig field, for the sizes every command shares.
SIZE_FLAGS = {
    "--layers": "n_layers",
    "--hidden": "hidden",
    "--heads": "n_heads",
    "--kv-heads": "n_kv_heads",
    "--ffn": "ffn",
    "--qk-head-dim": "qk_head_dim",
    "--v-head-dim": "v_head_dim",
    "--max-seq-len": "max_seq_len",
}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEFAULT_RTOL = 1e-5


class UsageError(ValueError):
    """A command-line value that is not allowed."""


# Errors caused by the user's input (OSError: a path the system refuses), printed as one line,
# exit status 2.
USER_ERRORS = (
    OSError,
    ConfigError,
    GrowthError,
    CheckpointError,
    UsageError,
    TrainConfigError,
    DataError,
    ShrinkError,
)


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _add_sizes(parser: argparse.ArgumentParser, target: bool) -> None:
    for flag, field in SIZE_FLAGS.items():
        help_text = f"target {field}" if target else field
        parser.add_argument(flag, dest=field, type=int, metavar="N", help=help_text)


def _sizes(args: argparse.Namespace) -> dict[str, int]:
    return {f: getattr(args, f) for f in SIZE_FLAGS.values() if getattr(args, f) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="growformer", description="Grow transformers exactly, and train them progressively."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = sub.add_parser("init", help="write a randomly initialized model folder")
    init.add_argument("dst", metavar="DST")
    _add_sizes(init, target=False)
    init.add_argument("--vocab", dest="vocab_size", type=int, metavar="V")
    init.add_argument("--norm", choices=("rms", "layer"))
    init.add_argument("--position", choices=("rope", "learned"))
    init.add_argument("--mlp", choices=("swiglu", "gelu", "relu"))
    init.add_argument("--tie", action=argparse.BooleanOptionalAction, help="tie W_U to embeddings")
    init.add_argument("--bias", action=argparse.BooleanOptionalAction, help="linear biases")
    init.add_argument("--seed", type=seed_arg, default=0)
    init.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    init.set_defaults(run=_cmd_init)

    g = sub.add_parser(
        "grow",
        help="grow a model folder (growformer or Hugging Face) to a larger size, exactly",
    )
    g.add_argument("src", metavar="SRC", help="a growformer or Hugging Face model folder")
    g.add_argument("dst", metavar="DST", help="the grown model, in the format of SRC")
    _add_sizes(g, target=True)
    g.add_argument("--layer-init", choices=LAYER_INITS, default="identity")
    g.add_argument("--where", choices=PLACEMENTS, default="end", help="where new layers go")
    g.add_argument("--width-init", choices=WIDTH_INITS, default="zero")
    g.add_argument("--seed", type=seed_arg, default=0, help="seed of the new random weights")
    g.add_argument(
        "--approximate",
        action="store_true",
        help="allow the non-exact hidden and layer growth of post-norm models (BERT) and "
        "print the measured deviation",
    )
    g.add_argument("--check", action="store_true", help="compare both models before writing")
    g.add_argument(
        "--tol",
        type=positive_float,
        default=None,
        help=f"relative tolerance of --check (default {DEFAULT_RTOL:g}), on the growth computed "
        "in float32 or wider",
    )
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    g.set_defaults(run=_cmd_grow)

    v = sub.add_parser("verify", help="compare two models' logits on a fixed random batch")
    v.add_argument("a", metavar="A")
    v.add_argument("b", metavar="B")
    v.add_argument(
        "--tol",
        type=positive_float,
        default=DEFAULT_RTOL,
        help="fail (exit 1) when max_abs_diff > TOL·max(1, max|logit|)",
    )
    v.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    v.set_defaults(run=_cmd_verify)

    info = sub.add_parser("info", help="print a model's (canonical) config and parameter count")
    info.add_argument("path", metavar="PATH")
    info.set_defaults(run=_cmd_info)
    add_commands(sub)
    add_shrink_command(sub)
    add_select_command(sub)
    return parser


def _cmd_init(args: argparse.Namespace) -> int:
    fields = _sizes(args)
    for name in ("vocab_size", "norm", "position", "mlp"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.tie is not None:
        fields["tie_embeddings"] = args.tie
    if args.bias is not None:
        fields.update(attn_bias=args.bias, attn_out_bias=args.bias, mlp_bias=args.bias)
    config = ModelConfig(**fields)
    check_destination(args.dst, args.overwrite)
    check_fits_in_memory(config, torch.float32, "cpu")
    torch.manual_seed(args.seed)
    model = Transformer(config)
    save_model(model, args.dst, overwrite=args.overwrite)
    print(f"wrote {args.dst}: {model.num_parameters():,} parameters")
    return 0


def _cmd_grow(args: argparse.Namespace) -> int:
    check_destination(args.dst, args.overwrite, source=args.src)
    if args.tol is not None and not args.check:
        raise UsageError("--tol is the tolerance of --check: pass --check too")
    options = GrowthOptions(
        layer_init=args.layer_init,
        where=args.where,
        width_init=args.width_init,
        seed=args.seed,
        approximate=args.approximate,
    )
    if is_hf_folder(args.src):
        source_hf = read_folder(args.src)
        grown_hf = grow_storable(source_hf, _sizes(args), options)
        source, grown = source_hf.model(), grown_hf.model()
        save = partial(write_folder, grown_hf, args.dst, like=args.src, overwrite=args.overwrite)
    else:
        source = load_model(args.src)
        grown, _ = grow(source, _sizes(args), options)
        save = partial(save_model, grown, args.dst, overwrite=args.overwrite)
    changes = [
        f"{f} {getattr(source.config, f)} → {getattr(grown.config, f)}"
        for f in SIZE_FIELDS
        if getattr(source.config, f) != getattr(grown.config, f)
    ]
    print(f"grow {args.src} → {args.dst}: {', '.join(changes) or 'no size change'}")
    print(f"parameters {source.num_parameters():,} → {grown.num_parameters():,}")
    if args.check or args.approximate:
        tol = DEFAULT_RTOL if args.tol is None else args.tol
        diff, stored = _growth_differences(source, grown, _sizes(args), options)
        label = "check" if args.check else "approximate growth"
        print(f"{label}: max_abs_diff={diff.max_abs_diff:.3e} (max |logit| {diff.scale:.3g})")
        if stored is not None:
            dtype = str(grown.output_embedding.dtype).removeprefix("torch.")
            print(
                f"stored in {dtype}: max_abs_diff={stored.max_abs_diff:.3e} (the growth plus "
                f"the rounding of rescaled weights to {dtype}; not part of the check)"
            )
        if args.check and not diff.within(tol):
            print(
                f"growformer grow: error: grown model differs by {diff.max_abs_diff:.3e} > "
                f"{tol:g}·max(1, {diff.scale:.3g}); nothing written",
                file=sys.stderr,
            )
            return 1
    save()
    return 0


def _growth_differences(
    source: Transformer, grown: Transformer, target: dict[str, int], options: GrowthOptions
) -> tuple[Difference, Difference | None]:
    """What ``grow --check`` measures on the fixed batch, in float32 or wider: the deviation of
    the growth itself and, for weights stored in 16 bits, that of the stored ``grown``.

    16-bit weights are grown again from the float32 copy of ``source`` for the first figure:
    storing rescaled weights (hidden growth's norm gains) rounds them to the stored precision,
    and that rounding moves the logits by an amount that grows with depth and with the norms'
    gains, so no tolerance on the stored model would tell exact growth from a wrong one.
    """
    tokens = fixed_batch(source.config.vocab_size, min(64, source.config.max_seq_len))
    wide_source = _at_least_float32(source)
    if wide_source is source:
        return logit_difference(source, grown, tokens), None
    wide_grown, _ = grow(wide_source, target, options)
    growth = logit_difference(wide_source, wide_grown, tokens)
    del wide_grown
    return growth, logit_difference(wide_source, _at_least_float32(grown), tokens)


def _at_least_float32(model: Transformer) -> Transformer:
    if model.output_embedding.dtype in (torch.float32, torch.float64):
        return model
    state = {name: t.float() for name, t in model.state_dict().items()}
    return model_from_state(model.config, state)


def _load(path: str, dtype: torch.dtype) -> Transformer:
    """A growformer folder, or a Hugging Face folder in canonical form, in ``dtype``."""
    if is_hf_folder(path):
        return read_folder(path).model().to(dtype)
    return load_model(path, dtype=dtype)


def _cmd_verify(args: argparse.Namespace) -> int:
    dtype = DTYPES[args.dtype]
    a = _load(args.a, dtype)
    b = _load(args.b, dtype)
    if a.config.vocab_size != b.config.vocab_size:
        raise UsageError(
            f"the models' vocab sizes differ ({a.config.vocab_size} vs {b.config.vocab_size})"
        )
    seq_len = min(64, a.config.max_seq_len, b.config.max_seq_len)
    diff = logit_difference(a, b, fixed_batch(a.config.vocab_size, seq_len))
    print(f"max_abs_logit={diff.scale:.6g}")
    print(f"tolerance={args.tol:g}·max(1, max_abs_logit)")
    print(f"max_abs_diff={diff.max_abs_diff:.6e}")
    return 0 if diff.within(args.tol) else 1


def _cmd_info(args: argparse.Namespace) -> int:
    if is_hf_folder(args.path):
        canonical = read_folder(args.path)
        family = canonical.family
        print(f"format: {family.model_type} ({canonical.source.architecture})")
        print(f"dtype: {str(canonical.state['tok_emb.weight'].dtype).removeprefix('torch.')}")
        model = canonical.model()
        if canonical.extras:
            names = ", ".join(canonical.extras)
            entries = sum(t.numel() for t in canonical.extras.values())
            print(f"{family.model_type}-only tensors ({entries:,} entries): {names}")
    else:
        model = load_model(args.path)
    for name, value in model.config.to_dict().items():
        print(f"{name}: {value}")
    print(f"parameters: {model.num_parameters():,}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:
        # The reader left (``growformer info M | head -1``): exit quietly, as the Python docs
        # advise, pointing stdout at devnull so the interpreter's final flush cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except USER_ERRORS as err:
        print(f"growformer {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
