"""Grow a random ~0.5B-parameter Llama-style checkpoint (bf16) on CPU, folder to folder.

The source has Qwen2-0.5B's shapes in a ``llama`` folder (vocab 151936, hidden 896, 24 layers,
14 heads, 2 kv heads, head_dim 64, FFN 4864, tied embeddings: 494M parameters, ~0.99 GB in one
``model.safetensors``) with random bf16 weights. Each row runs ``growformer.hf.grow_folder``
(read, grow, write) in a fresh process, after one warm-up read of the source (one-time costs of
the first call are not growth), and reports wall time, the sizes of input, output and the
largest output tensor, and peak memory above the start of the step, two ways:

- ``anon``: peak anonymous memory (``RssAnon``, sampled every 2 ms): what growth allocates.
  The source's tensors are memory-mapped views of its file, so they are not in it.
  Target: anon ≤ output + largest tensor + 10%.
- ``rss``: peak resident set (``VmHWM``, reset before the step), which also counts the pages of
  the mapped source that were read (file-backed page cache the kernel can drop).

    python bench/hf_grow.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from growformer import hf

HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 896, 24, 14, 2, 64, 4864, 151936
TARGETS = {
    "ffn 4864→6144": {"ffn": 6144},
    "layers 24→28": {"n_layers": 28},
    "heads 14→28 (kv 2)": {"n_heads": 28},
    "head_dim 64→80": {"qk_head_dim": 80, "v_head_dim": 80},
    "hidden 896→1120": {"hidden": 1120},
    "all of the above": {
        "ffn": 6144,
        "n_layers": 28,
        "n_heads": 28,
        "qk_head_dim": 80,
        "v_head_dim": 80,
        "hidden": 1120,
    },
}
MIB = 2**20


def write_source(folder: Path) -> None:
    """The random bf16 source folder, written tensor by tensor into one file."""
    folder.mkdir(parents=True)
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "tie_word_embeddings": True,
        "dtype": "bfloat16",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (HIDDEN,),
                p + "post_attention_layernorm.weight": (HIDDEN,),
                p + "self_attn.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN),
                p + "self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
                p + "self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
                p + "self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
                p + "mlp.gate_proj.weight": (FFN, HIDDEN),
                p + "mlp.up_proj.weight": (FFN, HIDDEN),
                p + "mlp.down_proj.weight": (HIDDEN, FFN),
            }
        )
    gen = torch.Generator().manual_seed(0)
    weights = {
        name: (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        for name, shape in shapes.items()
    }
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _row(src: Path, dst: Path, target: dict, queue: mp.Queue) -> None:
    hf.read_folder(src).model()  # warm-up: first-call costs are not growth
    start_anon, start_rss = _status_mib("RssAnon"), _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
    peak = [start_anon]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _status_mib("RssAnon"))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    _, grown = hf.grow_folder(src, dst, target)
    wall = time.perf_counter() - began
    done.set()
    sampler.join()
    largest = max(t.numel() * t.element_size() for t in grown.state.values()) / MIB
    queue.put((wall, peak[0] - start_anon, _status_mib("VmHWM") - start_rss, largest))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="keep the source folder here (and reuse it)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hf_grow."))
    src = args.keep or work / "source"
    if not (src / "model.safetensors").exists():
        print(f"writing the random source to {src} ...", flush=True)
        write_source(src)
    input_mib = (src / "model.safetensors").stat().st_size / MIB
    print(f"source: {input_mib:,.0f} MiB bf16, {torch.get_num_threads()} threads\n")
    header = f"{'target':<20} {'time':>7} {'output':>9} {'largest':>8} {'anon':>8} {'rss':>8}"
    print(header + "  anon ≤ output + largest + 10%")
    ctx = mp.get_context("spawn")
    try:
        for name, target in TARGETS.items():
            dst = work / "grown"
            queue = ctx.Queue()
            process = ctx.Process(target=_row, args=(src, dst, target, queue))
            process.start()
            wall, anon, rss, largest = queue.get()
            process.join()
            output = sum(f.stat().st_size for f in dst.glob("*.safetensors")) / MIB
            ok = anon <= (output + largest) * 1.1
            print(
                f"{name:<20} {wall:>6.1f}s {output:>6,.0f} MiB {largest:>4,.0f} MiB "
                f"{anon:>4,.0f} MiB {rss:>4,.0f} MiB  {'yes' if ok else 'NO'}",
                flush=True,
            )
            shutil.rmtree(dst)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
