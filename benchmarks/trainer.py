"""Training speed and peak memory: the hf_maxsup trainers against stock transformers trainers with label smoothing.

    python benchmarks/trainer.py                  # both models below, default sizes and batch shapes
    python benchmarks/trainer.py --models marian  # one of them
    python benchmarks/trainer.py --vocab 64 --d_model 16 --layers 1 --steps 1 --shapes 2x8  # quick check

Two models, each with its own table per batch shape:

- `marian`: a Marian-size translation model (V=32k, d_model 512, 6+6 layers), `MaxSupSeq2SeqTrainer` against stock
  `Seq2SeqTrainer(label_smoothing_factor=0.1)`. Shapes `batch x tokens`: a small batch (8 x 64, where the model, its
  Adam state and activations dominate memory) and a typical translation batch of 4,096 target tokens (32 x 128,
  where the (B, T, V) logits and what the loss makes of them dominate).
- `llama`: a causal LM whose logits dominate everything: a large vocabulary (V=128,256, Llama 3's) on a small Llama
  body (hidden 256, 2 layers), `MaxSupTrainer` against stock `Trainer(label_smoothing_factor=0.1)`, at 8 x 512
  tokens (4,096 tokens: fp32 logits of 2 GiB, and as much for their gradient).

Both include a `torch_compile=True` row (the model compiled by the Trainer with inductor, the loss eager beside it,
with the in-place gradient where the compiled graph did not save the logits) beside the same trainer in eager mode,
and `fused_linear_loss=True` rows, which never materialise the logits. Each candidate trains in a fresh process on
the same random token data with the same seed; the first step is excluded from the timing (allocator warm-up, and
the compilation of the compiled rows). Peak memory is the process's peak RSS. Ratios are to the stock
label-smoothing trainer measured in the same run. `--vocab`, `--d_model`, `--layers` and `--shapes` override the
sizes of every model run.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

# model -> sizes, batch shapes and candidates (table row -> (loss, fused_linear_loss, torch_compile); "stock" is
# transformers')
MODELS = {
    "marian": {
        "title": "Marian-size model: V={vocab}, d_model={d_model}, {layers}+{layers} layers",
        "vocab": 32000,
        "d_model": 512,
        "layers": 6,
        "shapes": ["8x64", "32x128"],
        "candidates": {
            "stock Seq2SeqTrainer, label_smoothing_factor=0.1": ("stock", False, False),
            "MaxSupSeq2SeqTrainer, loss=ls (alpha 0.1)": ("ls", False, False),
            "MaxSupSeq2SeqTrainer, loss=maxsup (alpha 0.1 -> 0.2)": ("maxsup", False, False),
            "MaxSupSeq2SeqTrainer, loss=maxsup, torch_compile=True": ("maxsup", False, True),
            "MaxSupSeq2SeqTrainer, loss=ls, fused_linear_loss=True": ("ls", True, False),
        },
    },
    "llama": {
        "title": "Causal LM, small Llama body, large vocabulary: V={vocab}, hidden {d_model}, {layers} layers",
        "vocab": 128256,
        "d_model": 256,
        "layers": 2,
        "shapes": ["8x512"],
        "candidates": {
            "stock Trainer, label_smoothing_factor=0.1": ("stock", False, False),
            "MaxSupTrainer, loss=ls (alpha 0.1)": ("ls", False, False),
            "MaxSupTrainer, loss=ls, torch_compile=True": ("ls", False, True),
            "MaxSupTrainer, loss=ls, fused_linear_loss=True": ("ls", True, False),
        },
    },
}


def build(model_name: str, args, batch: int, length: int):
    """The model, its training rows (batch x (steps + 1)) and its data collator."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import (
        DataCollatorForSeq2Seq,
        LlamaConfig,
        LlamaForCausalLM,
        MarianConfig,
        MarianMTModel,
        PreTrainedTokenizerFast,
        default_data_collator,
    )

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n_rows = batch * (args.steps + 1)
    if model_name == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=args.vocab,
                hidden_size=args.d_model,
                intermediate_size=4 * args.d_model,
                num_hidden_layers=args.layers,
                num_attention_heads=max(1, args.d_model // 64),
                max_position_embeddings=max(length, 512),
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=1,
            )
        )
        ids = [torch.randint(2, args.vocab, (length,), generator=g).tolist() for _ in range(n_rows)]
        return model, [{"input_ids": row, "labels": row} for row in ids], default_data_collator
    model = MarianMTModel(
        MarianConfig(
            vocab_size=args.vocab,
            d_model=args.d_model,
            encoder_layers=args.layers,
            decoder_layers=args.layers,
            encoder_attention_heads=8,
            decoder_attention_heads=8,
            encoder_ffn_dim=4 * args.d_model,
            decoder_ffn_dim=4 * args.d_model,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
            max_position_embeddings=512,
        )
    )
    rows = [
        {
            "input_ids": torch.randint(2, args.vocab, (length,), generator=g).tolist(),
            "labels": torch.randint(2, args.vocab, (length,), generator=g).tolist(),
        }
        for _ in range(n_rows)
    ]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1}, unk_token="<pad>")),
        pad_token="<pad>",
        eos_token="</s>",
    )
    return model, rows, DataCollatorForSeq2Seq(tokenizer, model=model)


def child(args) -> dict:
    from datasets import Dataset
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainerCallback, TrainingArguments

    from hf_maxsup import MaxSupSeq2SeqTrainer, MaxSupSeq2SeqTrainingArguments, MaxSupTrainer, MaxSupTrainingArguments

    batch, length = map(int, args.shape.split("x"))
    model, rows, collator = build(args.model, args, batch, length)
    common = dict(
        output_dir="/tmp/hf_maxsup_bench_trainer",
        per_device_train_batch_size=batch,
        max_steps=args.steps + 1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        logging_steps=10**6,
        torch_compile=args.compile,
    )
    seq2seq = args.model == "marian"
    if args.child == "stock":
        trainer_cls, args_cls = (Seq2SeqTrainer, Seq2SeqTrainingArguments) if seq2seq else (Trainer, TrainingArguments)
        training_args = args_cls(label_smoothing_factor=0.1, **common)
    else:
        trainer_cls, args_cls = (
            (MaxSupSeq2SeqTrainer, MaxSupSeq2SeqTrainingArguments)
            if seq2seq
            else (MaxSupTrainer, MaxSupTrainingArguments)
        )
        training_args = args_cls(loss=args.child, fused_linear_loss=args.fused, **common)

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                self.start = time.perf_counter()

    timer = Timer()
    trainer = trainer_cls(
        model=model,
        args=training_args,
        train_dataset=Dataset.from_list(rows),
        data_collator=collator,
        callbacks=[timer],
    )
    trainer.train()
    elapsed = time.perf_counter() - timer.start
    return {
        "steps_per_s": args.steps / elapsed,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_model(model_name: str, args) -> None:
    spec = MODELS[model_name]
    sizes = {
        key: getattr(args, key) if getattr(args, key) is not None else spec[key]
        for key in ("vocab", "d_model", "layers", "shapes")
    }
    print(spec["title"].format(**sizes) + f", {args.steps} timed steps")
    for shape in sizes["shapes"]:
        results = {}
        for name, (kind, fused, compiled) in spec["candidates"].items():
            command = [
                sys.executable,
                __file__,
                "--child",
                kind,
                "--model",
                model_name,
                "--shape",
                shape,
                "--vocab",
                str(sizes["vocab"]),
                "--d_model",
                str(sizes["d_model"]),
                "--layers",
                str(sizes["layers"]),
                "--steps",
                str(args.steps),
                *(["--fused"] if fused else []),
                *(["--compile"] if compiled else []),
            ]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[name] = json.loads(out.strip().splitlines()[-1])
        base = results[next(iter(spec["candidates"]))]
        print(f"\nbatch {shape.replace('x', ' x ')} tokens\n")
        print("| trainer | steps/s | × stock LS | peak RSS MiB | × stock LS |\n|---|---:|---:|---:|---:|")
        for name, r in results.items():
            print(
                f"| {name} | {r['steps_per_s']:.3f} | {r['steps_per_s'] / base['steps_per_s']:.2f} | "
                f"{r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] / base['peak_rss_mib']:.2f} |",
                flush=True,
            )
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--vocab", type=int, help="vocabulary size (default: per model)")
    parser.add_argument("--d_model", type=int, help="hidden size (default: per model)")
    parser.add_argument("--layers", type=int, help="layers (per stack for Marian; default: per model)")
    parser.add_argument("--shapes", nargs="+", help="batch x tokens, one table each (default: per model)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (one more runs first, untimed)")
    parser.add_argument("--child", choices=["stock", "ls", "maxsup"], help=argparse.SUPPRESS)
    parser.add_argument("--fused", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=list(MODELS), help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    for model_name in args.models:
        run_model(model_name, args)


if __name__ == "__main__":
    main()
