"""Progressive schedules against training from scratch, on the same token budget and batches.

Every schedule ends at the preset's target architecture after the same number of steps of the
same number of tokens (a stage of shorter sequences takes more of them), with the same seed and
so the same data order. For each run the table gives the training time and FLOPs it needs to
reach the scratch run's final validation loss, and the speed-ups: scratch's time (FLOPs) over
that. Runs go one after another in this process; ``--repeats 2`` runs the whole set twice and
reports each repeat, since same-seed runs differ in wall time by a few percent.

    python bench/progressive.py [--preset small] [--steps N]
                                [--schedules scratch,compound,stack,midas,apollo,lag-stack]
                                [--data stdlib:prose] [--out runs/bench]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from growformer import Transformer
from growformer.data import Dataset
from growformer.hf import FAMILIES, from_canonical, to_canonical
from growformer.train.commands import load_run_data, run_training
from growformer.train.flops import train_flops_per_token
from growformer.train.lr import lr_at
from growformer.train.metrics import MetricsLog
from growformer.train.plot import plot_runs
from growformer.train.report import speedup_table, summarize
from growformer.train.run_config import RunSpec, run_spec
from growformer.train.schedule import stage_at

HF_TRAINER = "-hf-trainer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--schedules", default="scratch,compound,stack,midas,apollo,lag-stack")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    names = args.schedules.split(",")
    if names[0] != "scratch":
        raise SystemExit("--schedules must start with scratch (the baseline)")
    train = {"steps": args.steps} if args.steps else {}
    specs = {
        name: run_spec(
            args.preset, train=train, schedule=name.removesuffix(HF_TRAINER), data=args.data
        )
        for name in names
    }
    first = specs["scratch"]
    dataset = load_run_data(first)
    tokens = first.train.steps * first.train.tokens_per_step
    print(f"data: {dataset.describe()}")
    print(
        f"preset {args.preset}: {first.train.steps} steps x {first.train.tokens_per_step} tokens "
        f"= {tokens:,} tokens ({dataset.train.epochs(tokens):.2f} epochs of the train split)"
    )
    for repeat in range(args.repeats):
        out = Path(args.out) / f"repeat{repeat}"
        for name, spec in specs.items():
            if name.endswith(HF_TRAINER):
                run_hf_trainer(spec, out / name, dataset)
            else:
                run_training(spec, out / name, dataset=dataset, overwrite=True, progress=False)
        summaries = [summarize(out / name) for name in names]
        print(f"\nrepeat {repeat + 1}:")
        print(speedup_table(summaries[0], summaries[1:]))
        print(f"plot: {plot_runs([out / n for n in names], out / 'loss.png')}")


def run_hf_trainer(spec: RunSpec, out: Path, dataset: Dataset) -> None:
    """Train ``spec`` with a transformers Trainer and the growth callback on a Llama built at the
    schedule's start size; ``out/metrics.csv`` as growformer's trainer writes it (evaluations
    on the same validation windows, time without evaluation and growth)."""
    import transformers

    from growformer.integrations.transformers import GrowthCallback

    train = spec.train
    target = spec.target.replace(vocab_size=dataset.vocab_size)
    stages = spec.schedule.plan(target, train)
    start = stages[0].config
    # config_to_hf writes the sizes; a fresh config needs the fields growth leaves alone too.
    fixed = {
        "vocab_size": start.vocab_size,
        "tie_word_embeddings": start.tie_embeddings,
        "initializer_range": start.init_std,
    }
    config = transformers.LlamaConfig(**FAMILIES["llama"].config_to_hf(start, fixed))
    # The weights growformer's trainer starts from (same seed, same init), as a Llama.
    torch.manual_seed(train.seed)
    initial = Transformer(start)
    skeleton = to_canonical(transformers.LlamaForCausalLM(config), copy=False)
    model = from_canonical(skeleton.with_model(initial), transformers.LlamaForCausalLM)

    class StepBatches(torch.utils.data.IterableDataset):
        """The batch of every step, as growformer's trainer draws it: at the stage's sequence
        length, with as many rows as keep the tokens per step (so the callback folds none)."""

        def __iter__(self):
            for step in range(train.steps):
                seq_len = stage_at(stages, step).seq_len
                inputs, targets = dataset.train.batch_at(step, train.rows_at(seq_len), seq_len)
                yield {"input_ids": inputs, "labels": targets, "shift_labels": targets}

    arguments = transformers.TrainingArguments(
        output_dir=str(out / "hf"),
        max_steps=train.steps,
        per_device_train_batch_size=1,
        learning_rate=train.lr,
        optim="adamw_torch_fused",  # growformer's AdamW, the fused kernel
        weight_decay=train.weight_decay,
        adam_beta1=train.beta1,
        adam_beta2=train.beta2,
        max_grad_norm=train.grad_clip,
        logging_steps=train.log_every,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        bf16=train.dtype == "bfloat16",
        seed=train.seed,
        # The Trainer drops batch keys its model's forward does not name, shift_labels among
        # them: the labels (already the next tokens) would then be shifted a second time.
        remove_unused_columns=False,
    )

    class SameScheduleTrainer(transformers.Trainer):
        """growformer's learning rate (``lr_at``): the Trainer's linear warmup starts at 0, one
        step behind it, which alone makes the two runs drift apart."""

        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    optimizer or self.optimizer, lambda step: lr_at(step, train) / train.lr
                )
            return self.lr_scheduler

    trainer = SameScheduleTrainer(
        model=model, args=arguments, train_dataset=StepBatches(), data_collator=lambda rows: rows[0]
    )
    growth = GrowthCallback(spec.schedule).attach(trainer)
    out.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(out)

    class RunLog(transformers.TrainerCallback):
        """Per step: tokens, FLOPs and training time (between step ends, less evaluation and
        growth); at growformer's cadence, the validation loss and a metrics.csv row."""

        time = flops = 0.0
        mark = 0.0

        def on_train_begin(self, args, state, control, **kwargs) -> None:
            self.mark = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kwargs) -> None:
            step = state.global_step
            grown = sum(e["seconds"] for e in growth.events if e["step"] == step - 1)
            self.time += time.perf_counter() - self.mark - grown
            per_token = train_flops_per_token(growth.config, growth.seq_len)
            self.flops += train.tokens_per_step * per_token
            if step % train.eval_every == 0 or step == train.steps:
                log.row(
                    step=step,
                    tokens=step * train.tokens_per_step,
                    flops=f"{self.flops:.6g}",
                    time=f"{self.time:.4f}",
                    val_loss=f"{_evaluate(model, dataset, spec):.6f}",
                    params=model.num_parameters(),
                    stage=growth.driver.stage,
                    seq_len=growth.seq_len,
                )
            self.mark = time.perf_counter()

    trainer.add_callback(RunLog())
    trainer.train()
    log.close()


@torch.no_grad()
def _evaluate(model, dataset: Dataset, spec: RunSpec) -> float:
    """Mean token loss on growformer's validation windows (``Trainer.evaluate``'s windows)."""
    train = spec.train
    micro = train.micro_batch_size
    model.eval()
    total, count = 0.0, 0
    for inputs, targets in dataset.val.eval_batches(
        micro, train.seq_len, train.eval_batches * micro
    ):
        logits = model(input_ids=inputs.to(model.device)).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.to(model.device).flatten())
        total += float(loss) * targets.numel()
        count += targets.numel()
    model.train()
    return total / count


if __name__ == "__main__":
    main()
