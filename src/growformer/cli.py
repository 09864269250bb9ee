"""The ``growformer`` command: init, grow, verify, info."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from growformer.compare import fixed_batch, logit_difference
from growformer.config import SIZE_FIELDS, ConfigError, ModelConfig
from growformer.expand import LAYER_INITS, PLACEMENTS, WIDTH_INITS, GrowthError, GrowthOptions, grow
from growformer.model import Transformer
from growformer.model_io import CheckpointError, check_destination, load_model, save_model

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


def _add_sizes(parser: argparse.ArgumentParser) -> None:
    for flag, field in SIZE_FLAGS.items():
        parser.add_argument(flag, dest=field, type=int, metavar="N", help=f"target {field}")


def _sizes(args: argparse.Namespace) -> dict[str, int]:
    return {f: getattr(args, f) for f in SIZE_FLAGS.values() if getattr(args, f) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="growformer", description="Grow transformers exactly, and train them progressively."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = sub.add_parser("init", help="write a randomly initialized model folder")
    init.add_argument("dst", metavar="DST")
    _add_sizes(init)
    init.add_argument("--vocab", dest="vocab_size", type=int, metavar="V")
    init.add_argument("--norm", choices=("rms", "layer"))
    init.add_argument("--position", choices=("rope", "learned"))
    init.add_argument("--mlp", choices=("swiglu", "gelu", "relu"))
    init.add_argument("--tie", action=argparse.BooleanOptionalAction, help="tie W_U to embeddings")
    init.add_argument("--bias", action=argparse.BooleanOptionalAction, help="linear biases")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    init.set_defaults(run=_cmd_init)

    g = sub.add_parser("grow", help="grow a model folder to a larger size, exactly")
    g.add_argument("src", metavar="SRC")
    g.add_argument("dst", metavar="DST")
    _add_sizes(g)
    g.add_argument("--layer-init", choices=LAYER_INITS, default="identity")
    g.add_argument("--where", choices=PLACEMENTS, default="end", help="where new layers go")
    g.add_argument("--width-init", choices=WIDTH_INITS, default="zero")
    g.add_argument("--seed", type=int, default=0, help="seed of the new random weights")
    g.add_argument(
        "--approximate",
        action="store_true",
        help="allow the non-exact hidden and layer growth of post-norm models",
    )
    g.add_argument("--check", action="store_true", help="compare both models before writing")
    g.add_argument("--tol", type=float, default=DEFAULT_RTOL, help="relative tolerance of --check")
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    g.set_defaults(run=_cmd_grow)

    v = sub.add_parser("verify", help="compare two models' logits on a fixed random batch")
    v.add_argument("a", metavar="A")
    v.add_argument("b", metavar="B")
    v.add_argument(
        "--tol",
        type=float,
        default=DEFAULT_RTOL,
        help="fail (exit 1) when max_abs_diff > TOL·max(1, max|logit|)",
    )
    v.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    v.set_defaults(run=_cmd_verify)

    info = sub.add_parser("info", help="print a model's config and parameter count")
    info.add_argument("path", metavar="PATH")
    info.set_defaults(run=_cmd_info)
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
    torch.manual_seed(args.seed)
    model = Transformer(config)
    save_model(model, args.dst, overwrite=args.overwrite)
    print(f"wrote {args.dst}: {model.num_parameters():,} parameters")
    return 0


def _cmd_grow(args: argparse.Namespace) -> int:
    check_destination(args.dst, args.overwrite)
    if args.tol <= 0:
        raise UsageError(f"--tol must be > 0, got {args.tol}")
    source = load_model(args.src)
    options = GrowthOptions(
        layer_init=args.layer_init,
        where=args.where,
        width_init=args.width_init,
        seed=args.seed,
        approximate=args.approximate,
    )
    grown, _ = grow(source, _sizes(args), options)
    changes = [
        f"{f} {getattr(source.config, f)} → {getattr(grown.config, f)}"
        for f in SIZE_FIELDS
        if getattr(source.config, f) != getattr(grown.config, f)
    ]
    print(f"grow {args.src} → {args.dst}: {', '.join(changes) or 'no size change'}")
    print(f"parameters {source.num_parameters():,} → {grown.num_parameters():,}")
    if args.check:
        tokens = fixed_batch(source.config.vocab_size, min(64, source.config.max_seq_len))
        diff = logit_difference(source, grown, tokens)
        print(f"check: max_abs_diff={diff.max_abs_diff:.3e} (max |logit| {diff.scale:.3g})")
        if not diff.within(args.tol):
            print(
                f"growformer: error: grown model differs by {diff.max_abs_diff:.3e} > "
                f"{args.tol:g}·max(1, {diff.scale:.3g}); nothing written",
                file=sys.stderr,
            )
            return 1
    save_model(grown, args.dst, overwrite=args.overwrite)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    if args.tol <= 0:
        raise UsageError(f"--tol must be > 0, got {args.tol}")
    dtype = DTYPES[args.dtype]
    a = load_model(args.a, dtype=dtype)
    b = load_model(args.b, dtype=dtype)
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
    model = load_model(args.path)
    for name, value in model.config.to_dict().items():
        print(f"{name}: {value}")
    print(f"parameters: {model.num_parameters():,}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, GrowthError, CheckpointError, UsageError) as err:
        print(f"growformer {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
