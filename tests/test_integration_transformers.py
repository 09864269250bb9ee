"""The transformers Trainer growth callback: exact growth mid-run, optimizer and scheduler
carried, checkpoints that load and resume at the grown size, misuse refused before any step."""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from growformer.expand import GrowthOptions
from growformer.integrations import hf_inplace
from growformer.integrations.folding import SequenceFolding
from growformer.integrations.transformers import GrowthCallback, GrowthCallbackError
from growformer.train.schedule import GrowthEvent, Schedule
from growth_callback_helpers import (
    GROW_AT,
    LLAMA_GROWN,
    LLAMA_START,
    ProbeTrainer,
    TokenRows,
    arguments,
    logged_losses,
    schedule,
)
from hf_tiny import gpt2, llama, qwen2, relative_error, tokens

HERE = Path(__file__).parent


def grown_trainer(
    tmp_path: Path, model, growth: Schedule, **args
) -> tuple[ProbeTrainer, GrowthCallback]:
    trainer = ProbeTrainer(
        model=model, args=arguments(tmp_path / "out", **args), train_dataset=TokenRows()
    )
    return trainer, GrowthCallback(growth).attach(trainer)


def test_llama_grows_exactly_trains_on_and_saves_at_the_grown_size(tmp_path):
    model = llama()
    start_config = model.config
    trainer, growth = grown_trainer(tmp_path, model, schedule())
    trainer.train()
    assert trainer.after[GROW_AT] == pytest.approx(trainer.before[GROW_AT], abs=1e-5)
    losses = logged_losses(trainer)
    assert len(losses) == 12 and all(map(math.isfinite, losses))
    assert sum(losses[-3:]) / 3 < sum(losses[GROW_AT : GROW_AT + 3]) / 3 < losses[0]
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads) == (3, 48, 6)
    assert (c.num_key_value_heads, c.intermediate_size, c.head_dim) == (3, 64, 8)
    assert trainer.model is model and model.model.layers[0].self_attn.config is c
    assert start_config.num_hidden_layers == 2  # the config the model was built with is kept
    (logged,) = [e for e in trainer.state.log_history if "growth_stage" in e]
    assert logged["step"] == GROW_AT and logged["growth_parameters"] == model.num_parameters()
    (event,) = growth.events
    assert event["config_after"]["hidden"] == 48 and event["params_after"] > event["params_before"]
    trainer.save_model(tmp_path / "final")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    assert loaded.config.num_hidden_layers == 3 and loaded.config.hidden_size == 48
    ids = tokens()
    with torch.no_grad():
        assert relative_error(model.eval()(ids).logits, loaded(ids).logits) == 0.0


@pytest.mark.parametrize("method", ["exact", "stack"])
def test_sliding_and_full_layers_keep_their_attention_when_grown_in_place(method):
    """A Qwen2 whose second layer attends through a window of 4 tokens: after depth growth in
    place each layer has the attention type of the layer it came from (exact growth keeps the
    logits on sequences longer than the window)."""
    model = qwen2(use_sliding_window=True, sliding_window=4, max_window_layers=1).eval()
    assert model.config.layer_types == ["full_attention", "sliding_attention"]
    ids = tokens(seq=16)
    with torch.no_grad():
        before = model(ids).logits
    options = GrowthOptions(where="interleave")
    event = GrowthEvent(step=1, sizes={"n_layers": 4}, method=method, options=options)
    hf_inplace.grow_(model, None, event)
    full, sliding = "full_attention", "sliding_attention"
    expected = [full, full, sliding, sliding] if method == "exact" else [full, sliding] * 2
    assert model.config.layer_types == expected
    assert model.config.max_window_layers == (2 if method == "exact" else 1)
    assert [layer.self_attn.layer_type for layer in model.model.layers] == expected
    if method == "exact":
        with torch.no_grad():
            assert relative_error(before, model(ids).logits) <= 1e-5


def test_gpt2_grows_exactly(tmp_path):
    start = {"n_layers": 2, "hidden": 32, "n_heads": 4, "n_kv_heads": 4, "ffn": 48}
    grown = {"n_layers": 3, "hidden": 48, "n_heads": 6, "n_kv_heads": 6, "ffn": 96}
    model = gpt2(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    trainer, _ = grown_trainer(tmp_path, model, schedule(start, grown), max_steps=8)
    trainer.train()
    assert trainer.after[GROW_AT] == pytest.approx(trainer.before[GROW_AT], abs=1e-5)
    assert (model.config.n_layer, model.config.n_embd, model.config.n_inner) == (3, 48, 96)
    assert logged_losses(trainer)[-1] < logged_losses(trainer)[0]


def test_adam_moments_are_carried_new_entries_zero_and_the_step_kept(tmp_path):
    model = llama()
    trainer, _ = grown_trainer(tmp_path, model, schedule(), max_steps=GROW_AT + 1)
    seen: list[dict[str, dict[str, torch.Tensor]]] = []

    class Moments(transformers.TrainerCallback):
        """The Adam state of two parameters of layer 0 at the growth step."""

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == GROW_AT:
                layer = model.model.layers[0]
                params = {"up": layer.mlp.up_proj.weight, "norm": layer.input_layernorm.weight}
                opt = trainer.optimizer
                seen.append(
                    {k: {s: v.clone() for s, v in opt.state[p].items()} for k, p in params.items()}
                )

    trainer.callback_handler.callbacks.insert(0, Moments())  # before the growth
    trainer.add_callback(Moments())  # after it
    trainer.train()
    before, after = seen
    for state in (*before.values(), *after.values()):
        assert float(state["step"]) == GROW_AT
    up_before, up_after = before["up"], after["up"]
    assert up_after["exp_avg"].shape == (64, 48)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(up_after[key][:48, :32], up_before[key])
        assert not up_after[key][48:].any() and not up_after[key][:, 32:].any()
    # RMSNorm gains are scaled by c = sqrt(32/48) with the function unchanged: m/c and v/c².
    c = math.sqrt(32 / 48)
    norm_before, norm_after = before["norm"], after["norm"]
    assert torch.allclose(norm_after["exp_avg"][:32], norm_before["exp_avg"] / c, rtol=1e-6)
    assert torch.allclose(
        norm_after["exp_avg_sq"][:32], norm_before["exp_avg_sq"] / c**2, rtol=1e-6
    )
    assert not norm_after["exp_avg"][32:].any()
    grouped = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters()}


def test_reset_policy_drops_the_state(tmp_path):
    model = llama()
    trainer, _ = grown_trainer(
        tmp_path,
        model,
        schedule({"ffn": 48}, {"ffn": 64}, state_policy="reset"),
        max_steps=GROW_AT + 1,
    )
    trainer.train()
    up = model.model.layers[0].mlp.up_proj.weight
    assert float(trainer.optimizer.state[up]["step"]) == 1.0


def test_rewarm_lowers_the_rate_after_growth_and_keeps_the_schedule(tmp_path):
    def rates(growth: Schedule) -> list[float]:
        trainer, _ = grown_trainer(tmp_path, llama(), growth, max_steps=10)
        trainer.train()
        return [e["learning_rate"] for e in trainer.state.log_history if "loss" in e]

    plain = rates(schedule({"ffn": 48}, {"ffn": 64}))
    warm = rates(schedule({"ffn": 48}, {"ffn": 64}, rewarm_steps=4))
    assert warm[:GROW_AT] == plain[:GROW_AT]
    ramp = [w / p for w, p in zip(warm[GROW_AT:], plain[GROW_AT:], strict=True)]
    assert ramp == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("saved_at", [3, 6], ids=["before-growth", "after-growth"])
def test_resume_from_a_checkpoint_continues_at_the_grown_size(tmp_path, saved_at):
    save = {"save_strategy": "steps", "save_steps": saved_at, "max_steps": 9}
    whole, _ = grown_trainer(tmp_path, llama(), schedule(), **save)
    whole.train()
    checkpoint = tmp_path / "out" / f"checkpoint-{saved_at}"
    config = transformers.AutoConfig.from_pretrained(checkpoint)
    assert config.num_hidden_layers == (3 if saved_at > GROW_AT else 2)

    model = llama()
    again = ProbeTrainer(
        model=model, args=arguments(tmp_path / "again", **save), train_dataset=TokenRows()
    )
    growth = GrowthCallback(schedule()).attach(again)
    again.train(resume_from_checkpoint=growth.prepare_resume(checkpoint))
    assert model.config.num_hidden_layers == 3 and len(growth.events) == (saved_at < GROW_AT)
    for (name, a), b in zip(whole.model.named_parameters(), model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_resume_with_an_optimizer_given_to_the_trainer(tmp_path):
    """The user's optimizer is built on the start-size model; prepare_resume points it at the
    grown parameters so the checkpoint's state loads into it."""
    save = {"save_strategy": "steps", "save_steps": 6, "max_steps": 9}

    def trainer(model, out: str) -> ProbeTrainer:
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        return ProbeTrainer(
            model=model,
            args=arguments(tmp_path / out, **save),
            train_dataset=TokenRows(),
            optimizers=(optimizer, None),
        )

    whole = trainer(llama(), "out")
    GrowthCallback(schedule()).attach(whole)
    whole.train()
    model = llama()
    again = trainer(model, "again")
    growth = GrowthCallback(schedule()).attach(again)
    again.train(resume_from_checkpoint=growth.prepare_resume(tmp_path / "out" / "checkpoint-6"))
    held = {id(p) for group in again.optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters()}
    for (name, a), b in zip(whole.model.named_parameters(), model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_a_toml_run_file_schedule_with_shorter_sequences_first(tmp_path):
    run_file = tmp_path / "run.toml"
    run_file.write_text(
        "preset = 'tiny'\n"
        "[model]\nn_layers = 3\nhidden = 32\nn_heads = 4\nn_kv_heads = 2\nffn = 64\n"
        "qk_head_dim = 8\nv_head_dim = 8\n"
        "[train]\nseq_len = 16\n"
        "[schedule]\nname = 'short-first'\n"
        "[schedule.start]\nn_layers = 2\nffn = 48\nseq_len = 8\n"
        "[[schedule.grow]]\nat = 0.5\nn_layers = 3\nffn = 64\nseq_len = 16\n"
    )
    model = llama()
    seen: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(  # runs after the callback's folding
        lambda m, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    trainer, growth = grown_trainer(tmp_path, model, run_file, max_steps=8)
    trainer.probe_steps = frozenset()
    trainer.train()
    assert growth.events[0]["step"] == 4 and growth.seq_len == 16
    assert set(seen[:4]) == {(16, 8)} and set(seen[4:]) == {(8, 16)}
    assert model.config.num_hidden_layers == 3


def test_folding_splits_training_rows_and_rescales_the_loss_normalizer():
    model = llama().train()
    ids = tokens(batch=2, seq=16)
    folded_rows = ids.reshape(4, 8)
    expected = model(input_ids=folded_rows, labels=folded_rows).loss  # mean over 4·7 targets
    folding = SequenceFolding(model)
    folding.seq_len = 8
    # The Trainer counts 2·15 targets in the unfolded batch; folding leaves 4·7.
    folded = model(input_ids=ids, labels=ids, num_items_in_batch=torch.tensor(30)).loss
    assert torch.allclose(folded, expected, rtol=1e-6)
    with torch.no_grad():
        assert model.eval()(input_ids=ids).logits.shape == (2, 16, 64)  # eval: not folded
    folding.remove()


# -- misuse: refused when training begins, before any step ------------------------------------


def refused(tmp_path, model, growth, match: str, **trainer_kwargs) -> None:
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = ProbeTrainer(
        model=model, args=arguments(tmp_path / "out"), train_dataset=TokenRows(), **trainer_kwargs
    )
    GrowthCallback(growth).attach(trainer)
    with pytest.raises(GrowthCallbackError, match=match):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())


def test_an_unsupported_model_class_is_refused(tmp_path):
    config = transformers.OPTConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        ffn_dim=48,
        num_attention_heads=4,
        max_position_embeddings=16,
        word_embed_proj_dim=32,
    )
    model = transformers.OPTForCausalLM(config)
    refused(
        tmp_path, model, schedule(), "OPTForCausalLM cannot grow in place.*'opt' is not supported"
    )


def test_a_schedule_for_another_start_size_is_refused(tmp_path):
    other = schedule({**LLAMA_START, "n_layers": 1}, LLAMA_GROWN)
    refused(
        tmp_path, llama(), other, r"not at the schedule's start size: n_layers=2 \(expected 1\)"
    )


def test_a_schedule_that_shrinks_the_model_is_refused(tmp_path):
    shrink = schedule(LLAMA_START, {"ffn": 32})
    refused(tmp_path, llama(), shrink, "does not apply.*ffn would shrink from 48 to 32")


def test_a_schedule_that_needs_growformers_trainer_is_refused(tmp_path):
    apollo = dataclasses.replace(schedule(), depth_sampling="lvps")
    refused(tmp_path, llama(), apollo, "depth_sampling='lvps'.*growformer's own trainer")


def test_a_stage_the_model_family_cannot_hold_is_refused(tmp_path):
    heads_only = schedule({"n_heads": 4, "n_kv_heads": 4}, {"n_heads": 8, "n_kv_heads": 8})
    refused(tmp_path, gpt2(), heads_only, "GPT2LMHeadModel cannot hold a stage.*n_embd/n_head")


def test_an_optimizer_whose_state_cannot_be_carried_fails_after_its_first_step(tmp_path):
    """Adafactor's factored second moments fit no per-entry transform: that is known once the
    optimizer has state, so the run stops after step 1, not at the growth step."""
    model = llama()
    trainer = ProbeTrainer(
        model=model,
        args=arguments(tmp_path / "out", optim="adafactor"),
        train_dataset=TokenRows(),
    )
    GrowthCallback(schedule()).attach(trainer)
    with pytest.raises(
        GrowthCallbackError, match=r"cannot be carried.*exp_avg_sq_row.*state_policy='reset'"
    ) as error:
        trainer.train()
    assert "moment_powers" not in str(error.value)  # no callback takes it
    assert trainer.state.global_step == 1
    reset = ProbeTrainer(
        model=llama(),
        args=arguments(tmp_path / "reset", optim="adafactor"),
        train_dataset=TokenRows(),
    )
    GrowthCallback(schedule(state_policy="reset")).attach(reset)
    reset.train()
    assert reset.state.global_step == 12


def test_gradient_checkpointing_stays_on_through_growth(tmp_path):
    """The grown layers are built with checkpointing off; they take the live model's."""
    model = llama()
    trainer = transformers.Trainer(
        model=model,
        args=arguments(tmp_path / "out", gradient_checkpointing=True, max_steps=GROW_AT + 1),
        train_dataset=TokenRows(),
    )
    growth = GrowthCallback(schedule()).attach(trainer)
    trainer.train()
    assert len(growth.events) == 1
    assert model.config.num_hidden_layers == LLAMA_GROWN["n_layers"]
    assert all(layer.gradient_checkpointing for layer in model.model.layers)


def test_neftune_is_refused(tmp_path):
    """NEFTune's noise is a hook on the embedding module that growth replaces."""
    model = llama()
    trainer = transformers.Trainer(
        model=model,
        args=arguments(tmp_path / "out", neftune_noise_alpha=5.0),
        train_dataset=TokenRows(),
    )
    GrowthCallback(schedule()).attach(trainer)
    with pytest.raises(GrowthCallbackError, match="neftune_noise_alpha"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_an_optimizer_with_foreign_parameters_is_refused(tmp_path):
    model = llama()
    extra = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([{"params": list(model.parameters())}, {"params": [extra]}])
    refused(
        tmp_path,
        model,
        schedule(),
        "param group 1 holds 1 tensor.*not parameters of the grown",
        optimizers=(optimizer, None),
    )


def test_a_callback_not_attached_to_its_trainer_is_refused(tmp_path):
    model = llama()
    trainer = ProbeTrainer(
        model=model,
        args=arguments(tmp_path / "out"),
        train_dataset=TokenRows(),
        callbacks=[GrowthCallback(schedule())],
    )
    with pytest.raises(GrowthCallbackError, match=r"attach\(trainer\)"):
        trainer.train()


def test_a_schedule_file_that_does_not_parse_is_refused_at_once(tmp_path):
    (tmp_path / "bad.toml").write_text("[schedule]\nname = 'nope'\n")
    with pytest.raises(ValueError, match="schedule must be one of"):
        GrowthCallback(tmp_path / "bad.toml")


def test_a_run_file_growth_step_past_its_preset_steps_is_accepted(tmp_path):
    """The Trainer's max_steps, not the preset's step count (tiny: 40), bounds the steps."""
    run_file = tmp_path / "late.toml"
    run_file.write_text(
        "preset = 'tiny'\n[schedule]\nname = 'late'\nstart = { n_layers = 1 }\n"
        "[[schedule.grow]]\nstep = 50\nn_layers = 2\n"
    )
    GrowthCallback(run_file)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_grow_in_step(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += [
        "--master_port",
        str(free_port()),
        str(HERE / "growth_callback_ddp.py"),
        str(tmp_path),
    ]
    subprocess.run(command, check=True, env=env, cwd=tmp_path, timeout=300)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0["state"].keys() == rank1["state"].keys()
    for name, tensor in rank0["state"].items():
        assert torch.equal(tensor, rank1["state"][name]), name
    assert rank0["state"]["model.layers.2.mlp.up_proj.weight"].shape == (64, 48)
    for probe in (rank0, rank1):
        assert probe["after"] == pytest.approx(probe["before"], abs=1e-5)
        assert probe["losses"][-1] < probe["losses"][0]
