"""Training speed and peak memory: MaxSupSeq2SeqTrainer against stock Seq2SeqTrainer(label_smoothing_factor=0.1).

    python benchmarks/trainer.py                                # Marian-size model (V=32k, d_model 512, 6+6 layers)
    python benchmarks/trainer.py --layers 1 --steps 2 --shapes 4x16  # quick check

Each candidate trains in a fresh process on the same random token data with the same seed; the first step is
excluded from the timing (allocator warm-up). Peak memory is the process's peak RSS. Ratios are to the stock
label-smoothing trainer measured in the same run. Batch shapes are `batch x tokens`: the default pair is a small batch
(8 x 64, where the model, its Adam state and activations dominate memory) and a typical translation batch of 4,096
target tokens (32 x 128, where the (B, T, V) logits and what the loss makes of them dominate).
"""

import argparse
import json
import resource
import subprocess
import sys
import time

CANDIDATES = {
    "stock Seq2SeqTrainer, label_smoothing_factor=0.1": "stock",
    "MaxSupSeq2SeqTrainer, loss=ls (alpha 0.1)": "ls",
    "MaxSupSeq2SeqTrainer, loss=maxsup (alpha 0.1 -> 0.2)": "maxsup",
}


def child(kind: str, args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (DataCollatorForSeq2Seq, MarianConfig, MarianMTModel, PreTrainedTokenizerFast,
                              Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback)
    from tokenizers import Tokenizer, models

    from hf_maxsup import MaxSupSeq2SeqTrainer, MaxSupSeq2SeqTrainingArguments

    torch.manual_seed(0)
    batch, length = map(int, args.shape.split("x"))
    config = MarianConfig(vocab_size=args.vocab, d_model=args.d_model, encoder_layers=args.layers,
                          decoder_layers=args.layers, encoder_attention_heads=8, decoder_attention_heads=8,
                          encoder_ffn_dim=4 * args.d_model, decoder_ffn_dim=4 * args.d_model, pad_token_id=0,
                          eos_token_id=1, decoder_start_token_id=0, max_position_embeddings=512)
    model = MarianMTModel(config)
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(2, args.vocab, (length,), generator=g).tolist(),
             "labels": torch.randint(2, args.vocab, (length,), generator=g).tolist()}
            for _ in range(batch * (args.steps + 1))]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1},
                                                                                    unk_token="<pad>")),
                                        pad_token="<pad>", eos_token="</s>")
    common = dict(output_dir="/tmp/hf_maxsup_bench_trainer", per_device_train_batch_size=batch,
                  max_steps=args.steps + 1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
                  disable_tqdm=True, logging_steps=10**6)
    if kind == "stock":
        trainer_cls, training_args = Seq2SeqTrainer, Seq2SeqTrainingArguments(label_smoothing_factor=0.1, **common)
    else:
        trainer_cls, training_args = MaxSupSeq2SeqTrainer, MaxSupSeq2SeqTrainingArguments(loss=kind, **common)

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                self.start = time.perf_counter()

    timer = Timer()
    trainer = trainer_cls(model=model, args=training_args, train_dataset=Dataset.from_list(rows),
                          data_collator=DataCollatorForSeq2Seq(tokenizer, model=model), callbacks=[timer])
    trainer.train()
    elapsed = time.perf_counter() - timer.start
    return {"steps_per_s": args.steps / elapsed,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--d_model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--shapes", nargs="+", default=["8x64", "32x128"], help="batch x tokens, one table each")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (one more runs first, untimed)")
    parser.add_argument("--child", choices=["stock", "ls", "maxsup"], help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    print(f"Marian-size model: V={args.vocab}, d_model={args.d_model}, {args.layers}+{args.layers} layers, "
          f"{args.steps} timed steps")
    for shape in args.shapes:
        results = {}
        for name, kind in CANDIDATES.items():
            command = [sys.executable, __file__, "--child", kind, "--shape", shape, "--vocab", str(args.vocab),
                       "--d_model", str(args.d_model), "--layers", str(args.layers), "--steps", str(args.steps)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[name] = json.loads(out.strip().splitlines()[-1])
        base = results[next(iter(CANDIDATES))]
        print(f"\nbatch {shape.replace('x', ' x ')} tokens\n")
        print("| trainer | steps/s | × stock LS | peak RSS MiB | × stock LS |\n|---|---:|---:|---:|---:|")
        for name, r in results.items():
            print(f"| {name} | {r['steps_per_s']:.3f} | {r['steps_per_s'] / base['steps_per_s']:.2f} | "
                  f"{r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] / base['peak_rss_mib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
