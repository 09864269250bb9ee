"""Time and peak memory of growing a ~110M-parameter model, against copying its parameters.

Each row runs in a fresh process (so peak memory is its own): build the source model, then
time (a) a plain copy of every source parameter, (b) ``grow`` to the row's target and (c) a
plain copy of every parameter of the grown model, in turn in each repeat (best of the repeats
for each). Peak memory is the process's peak resident set (Linux ``VmHWM``, reset before
the measured step) minus the resident set before the source model existed, against
old + new model size. Targets: grow time ≤ 2x copy time; peak ≤ (old + new) · 1.1.
``new/old`` is the size ratio: writing the new model alone costs about that many copies, so
beside the issue's ``grow/copy`` the table shows ``grow/copy new``, against (c): the same clone
loop over a model of the target size.

    python bench/grow_speed.py [--repeats 3] [--threads 2] [--rows hidden layers]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from growformer import GrowthOptions, ModelConfig, Transformer, grow

SOURCE = ModelConfig(
    vocab_size=32000,
    max_seq_len=1024,
    n_layers=12,
    hidden=768,
    n_heads=12,
    ffn=2048,
    tie_embeddings=True,
)
TARGETS = {
    "ffn 2048→3072": {"ffn": 3072},
    "heads 12→16": {"n_heads": 16},
    "hidden 768→1024": {"hidden": 1024},
    "layers 12→16": {"n_layers": 16},
    "all of the above": {"ffn": 3072, "n_heads": 16, "hidden": 1024, "n_layers": 16},
}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _size_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _timed(make: Callable[[], object]) -> float:
    """Seconds ``make`` takes; what it returns is released after the clock stops."""
    start = time.perf_counter()
    result = make()
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def _row(name: str, threads: int, repeats: int, queue: mp.Queue) -> None:
    torch.set_num_threads(threads)
    base_kib = _rss_kib("VmRSS")
    with torch.device("meta"):
        source = Transformer(SOURCE)
    source = source.to_empty(device="cpu")
    for p in source.parameters():
        p.data.normal_(0, 0.02)
    copy_times, grow_times, new_copy_times = [], [], []
    peak = 0
    for _ in range(repeats):
        # The three timings interleaved, so that on a shared machine they see the same load.
        copy_times.append(_timed(lambda: [p.detach().clone() for p in source.parameters()]))
        _reset_peak()
        start = time.perf_counter()
        grown, _ = grow(source, TARGETS[name], GrowthOptions())
        grow_times.append(time.perf_counter() - start)
        peak = max(peak, (_rss_kib("VmHWM") - base_kib) * 1024)
        new_bytes = _size_bytes(grown)
        new_params = grown.num_parameters()
        new_copy_times.append(_timed(lambda g=grown: [p.detach().clone() for p in g.parameters()]))
        del grown
    queue.put(
        {
            "name": name,
            "old_params": source.num_parameters(),
            "new_params": new_params,
            "copy_s": min(copy_times),
            "grow_s": min(grow_times),
            "copy_new_s": min(new_copy_times),
            "peak": peak,
            "old_plus_new": _size_bytes(source) + new_bytes,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=[name.split()[0] for name in TARGETS],
        help="only these rows (the first word of a target)",
    )
    args = parser.parse_args()
    rows = [name for name in TARGETS if not args.rows or name.split()[0] in args.rows]
    # Every allocation a fresh mapping (glibc's threshold otherwise adapts, so the copy would
    # sometimes reuse warm memory and sometimes page-fault): both sides pay the same first touch.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 16))
    ctx = mp.get_context("spawn")
    print(f"source: {SOURCE.n_layers} layers, hidden {SOURCE.hidden}, ffn {SOURCE.ffn}, float32")
    print(f"best of {args.repeats}, {args.threads} threads, torch {torch.__version__}")
    header = (
        f"{'target':<18} {'params':>13} {'copy s':>7} {'grow s':>7} {'grow/copy':>9} "
        f"{'new/old':>7} {'copy new s':>10} {'grow/copy new':>13} "
        f"{'peak GB':>8} {'old+new GB':>10} {'peak/(old+new)':>14}"
    )
    print(header)
    print("-" * len(header))
    for name in rows:
        queue = ctx.Queue()
        proc = ctx.Process(target=_row, args=(name, args.threads, args.repeats, queue))
        proc.start()
        r = queue.get()
        proc.join()
        params = f"{r['old_params'] / 1e6:.0f}M→{r['new_params'] / 1e6:.0f}M"
        print(
            f"{name:<18} {params:>13} {r['copy_s']:>7.3f} {r['grow_s']:>7.3f} "
            f"{r['grow_s'] / r['copy_s']:>9.2f} {r['new_params'] / r['old_params']:>7.2f} "
            f"{r['copy_new_s']:>10.3f} {r['grow_s'] / r['copy_new_s']:>13.2f} "
            f"{r['peak'] / 1e9:>8.2f} "
            f"{r['old_plus_new'] / 1e9:>10.2f} {r['peak'] / r['old_plus_new']:>14.2f}"
        )


if __name__ == "__main__":
    main()
