"""The exactness the test suite measures, as a table for the README.

Runs every model variant x expansion of ``tests/test_expand_exact.py`` (the same perturbed
models: norm gains 1 ± 0.3, random biases, logits of order 10) and prints, per expansion and
dtype, the worst relative error max |logit diff| / max(1, max |logit|) over the variants.

    python bench/exactness.py
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import (
    EXPANSIONS,
    POST_NORM,
    POST_NORM_EXACT,
    VARIANTS,
    expansion,
    make_model,
    relative_error,
    tokens_for,
)
from growformer import grow

# Test-case name prefix → the row's name (the size field it grows).
GROUPS = {
    "ffn": "ffn",
    "heads": "heads",
    "v_dim": "v_head_dim",
    "qk_dim": "qk_head_dim",
    "hidden": "hidden",
    "layers": "layers",
    "max_seq_len": "max_seq_len",
    "all_fields": "all fields at once",
}


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    worst: dict[tuple[str, torch.dtype], float] = defaultdict(float)
    cases: dict[str, int] = defaultdict(int)
    models = [(name, config) for name, config in VARIANTS.items()]
    models.append(("post_norm", POST_NORM))
    for variant, config in models:
        for dtype in (torch.float64, torch.float32):
            model = make_model(config, dtype)
            tokens = tokens_for(config)
            for name in EXPANSIONS:
                if variant == "post_norm" and name not in POST_NORM_EXACT:
                    continue
                target, options = expansion(name, config)
                grown, _ = grow(model, target, options)
                group = next(g for g in GROUPS if name.startswith(g))
                error = relative_error(model, grown, tokens)
                worst[group, dtype] = max(worst[group, dtype], error)
                cases[group] += dtype == torch.float64
    print("| expansion | cases | float64 | float32 |")
    print("|---|---|---|---|")
    for group in GROUPS:
        f64, f32 = worst[group, torch.float64], worst[group, torch.float32]
        print(f"| {GROUPS[group]} | {cases[group]} | {f64:.1e} | {f32:.1e} |")


if __name__ == "__main__":
    main()
