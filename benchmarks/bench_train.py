"""Student SFT recipes on this CPU: trained tokens/s and loss curves of SmolLM2-135M-Instruct through
persyn.experiments.train.

Real rows: GSM8K training questions with their reference solutions as the response (~90 prompt + ~130 response
tokens with the chat template). Every recipe trains through persyn's own path (build_trainer: TRL SFTTrainer, loss on
the completion only) for the same steps, seed and data order. Recipes run in worker processes that pass a baton every
`--chunk` steps (A B C D A B C D ...), so machine load hits them alike; the baton waits are not timed. One process per
recipe because accelerate keeps the mixed-precision setting in a process-wide singleton. A waiting recipe holds
~1.2 GB (full) or ~0.6 GB (LoRA); the one training peaks near 10 GB (`--live 1` runs them one after another).

Per recipe: trained tokens/s (non-padding tokens of each step over its wall time, the first `--warmup` steps left
out), the per-step loss curve, and the held-out completion loss (fp32, no autocast) after training. Noise: full fp32
again with another data-order seed. A recipe matches fp32 when its curve distance to fp32 (same batches) and its
held-out loss difference are both within the seed-to-seed spread of fp32 itself.

    nice -n 5 python benchmarks/bench_train.py [--steps 8] [--batch 8] [--chunk 2] [--live 5] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, gsm8k_pairs

MODEL = "smollm2-135m-instruct"
# name: (lora, bf16, data-order seed)
RECIPES = {
    "full fp32": (False, False, 0),
    "full bf16": (False, True, 0),
    "lora fp32": (True, False, 0),
    "lora bf16": (True, True, 0),
    "full fp32 seed 1": (False, False, 1),
}
BASELINE, NOISE = "full fp32", "full fp32 seed 1"


def write_rows(path: Path, questions: list[str], answers: list[str]) -> None:
    rows = [{"id": f"gsm8k-{i}", "teacher": "reference", "source": "gsm8k",
             "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for i, (q, a) in enumerate(zip(questions, answers, strict=True))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} logical CPUs"
    return platform.machine()


def _rss_gb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 1e9


def heldout_loss(model, tok, questions: list[str], answers: list[str], batch: int = 8) -> float:
    """Mean NLL per response token (fp32, no autocast), the prompt masked as in training."""
    import torch

    examples = []
    for q, a in zip(questions, answers, strict=True):
        user = [{"role": "user", "content": q}]
        prompt = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        full = tok.apply_chat_template(user + [{"role": "assistant", "content": a}], tokenize=True,
                                       return_dict=True)["input_ids"]
        assert full[:len(prompt)] == prompt
        examples.append((full, len(prompt)))
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for s in range(0, len(examples), batch):
            chunk = examples[s:s + batch]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), tok.pad_token_id)
            labels = torch.full((len(chunk), width), -100)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (seq, start) in enumerate(chunk):
                ids[row, :len(seq)] = torch.tensor(seq)
                mask[row, :len(seq)] = 1
                labels[row, start:len(seq)] = torch.tensor(seq[start:])
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                    labels[:, 1:].reshape(-1), reduction="sum")
            total += nll.item()
            count += int((labels[:, 1:] != -100).sum())
    model.train(was_training)
    return total / count


def worker(name: str, args: argparse.Namespace, data: str, heldout: tuple[list[str], list[str]], conn) -> None:
    """Train one recipe, handing the baton back every `args.chunk` steps; send the result at the end."""
    import torch
    from transformers import TrainerCallback

    from persyn.experiments.train import TrainConfig, build_trainer

    libc = ctypes.CDLL("libc.so.6")

    torch.set_num_threads(args.threads)
    Path("/proc/self/oom_score_adj").write_text("1000")  # on a shared machine, this goes first if memory runs out
    lora, bf16, seed = RECIPES[name]
    cfg = TrainConfig(model=MODEL, output_dir=tempfile.mkdtemp(prefix="bench_train_"), max_steps=args.steps,
                      batch_size=args.batch, max_length=args.max_length, seed=seed, lora=lora, bf16=bf16,
                      learning_rate=args.lora_lr if lora else args.lr, logging_steps=1)
    trainer = build_trainer(cfg, Path(data))
    tok = trainer.processing_class
    base = heldout_loss(trainer.model, tok, *heldout, batch=4) if name == BASELINE else None

    class Baton(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []
            self.rss: list[float] = []
            self.mark = self.cpu_mark = 0.0

        def _wait(self) -> None:
            libc.malloc_trim(0)  # hand freed activations back to the OS while this recipe waits
            self.rss.append(_rss_gb())
            conn.send(("yield", None))
            assert conn.recv() == "go"
            self.mark, self.cpu_mark = time.perf_counter(), time.process_time()

        def on_train_begin(self, *_a, **_k):
            self._wait()

        def on_step_end(self, _args, state, *_a, **_k):
            now, cpu = time.perf_counter(), time.process_time()
            self.seconds.append(now - self.mark)
            self.cpu_seconds.append(cpu - self.cpu_mark)
            self.mark, self.cpu_mark = now, cpu
            if state.global_step % args.chunk == 0 and state.global_step < args.steps:
                self._wait()

    baton = Baton()
    trainer.add_callback(baton)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    cumulative = [int(float(h["num_tokens"])) for h in logs]
    tokens = [b - a for a, b in zip([0] + cumulative, cumulative, strict=False)]
    conn.send(("done", {
        "lora": lora, "bf16": bf16, "seed": seed, "learning_rate": cfg.learning_rate,
        "loss": [float(h["loss"]) for h in logs], "tokens": tokens, "seconds": baton.seconds,
        "cpu_seconds": baton.cpu_seconds, "paused_rss_gb": max(baton.rss),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "heldout_loss": heldout_loss(trainer.model, tok, *heldout, batch=4), "base_heldout_loss": base,
        "autocast": trainer.accelerator.mixed_precision,
    }))


def run_interleaved(args: argparse.Namespace, data: str, heldout) -> dict[str, dict]:
    """Round-robin over at most `args.live` workers at a time (each holds its model and optimizer in memory)."""
    ctx = mp.get_context("spawn")  # a fresh accelerate state per recipe
    pending, live, results = list(args.recipes), {}, {}

    def start(name: str) -> None:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(name, args, data, heldout, child), daemon=True)
        proc.start()
        live[name] = (proc, parent)

    while pending or live:
        fresh = []
        while pending and len(live) < args.live:
            fresh.append(pending.pop(0))
            start(fresh[-1])
        for name in fresh:  # built and waiting before anyone trains
            assert live[name][1].recv() == ("yield", None), name
        for name in list(live):
            proc, conn = live[name]
            conn.send("go")
            kind, payload = conn.recv()
            if kind == "done":
                results[name] = payload
                proc.join()
                del live[name]
                print(f"  {name}: done", flush=True)
    return results


def summarise(results: dict[str, dict], warmup: int) -> dict[str, dict]:
    base = results[BASELINE]
    half = len(base["loss"]) // 2

    def curve_distance(a: list[float], b: list[float]) -> float:
        return statistics.fmean(abs(x - y) for x, y in zip(a[half:], b[half:], strict=True))

    rows = {}
    for name, r in results.items():
        tokens = sum(r["tokens"][warmup:])
        rows[name] = {"tokens_per_s": tokens / sum(r["seconds"][warmup:]),
                      "tokens_per_cpu_s": tokens / sum(r["cpu_seconds"][warmup:]),
                      "tokens_per_step": tokens / len(r["tokens"][warmup:]),
                      "seconds_per_step": statistics.fmean(r["seconds"][warmup:]),
                      "last_half_loss": statistics.fmean(r["loss"][half:]), "heldout_loss": r["heldout_loss"],
                      "curve_distance_to_fp32": curve_distance(r["loss"], base["loss"])}
    for r in rows.values():
        r["speed_vs_fp32"] = r["tokens_per_s"] / rows[BASELINE]["tokens_per_s"]
        r["cpu_speed_vs_fp32"] = r["tokens_per_cpu_s"] / rows[BASELINE]["tokens_per_cpu_s"]
        r["heldout_vs_fp32"] = r["heldout_loss"] - rows[BASELINE]["heldout_loss"]
    noise = rows.get(NOISE)
    for name, r in rows.items():
        if noise is None or name in (BASELINE, NOISE):
            r["matches_fp32"] = None
            continue
        r["matches_fp32"] = (r["curve_distance_to_fp32"] <= noise["curve_distance_to_fp32"]
                             and abs(r["heldout_vs_fp32"]) <= abs(noise["heldout_vs_fp32"]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=2, help="steps a recipe runs before passing the baton")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of tokens/s")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--lr", type=float, default=5e-5, help="full fine-tuning learning rate")
    ap.add_argument("--lora-lr", type=float, default=2e-4)
    ap.add_argument("--heldout", type=int, default=24, help="held-out rows for the loss after training")
    ap.add_argument("--live", type=int, default=len(RECIPES),
                    help="recipes held in memory at once (1: one after another)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--out", default=str(ROOT / "docs" / "perf" / "bench_train.json"))
    args = ap.parse_args()

    n_train = args.steps * args.batch
    questions, answers = gsm8k_pairs(n_train + args.heldout)
    heldout = (questions[n_train:], answers[n_train:])
    started, load_before = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "sft.jsonl"
        write_rows(data, questions[:n_train], answers[:n_train])
        print(f"{len(args.recipes)} recipes x {args.steps} steps of {args.batch} GSM8K rows, baton every "
              f"{args.chunk} steps", flush=True)
        results = run_interleaved(args, str(data), heldout)
    wall = time.perf_counter() - started
    rows = summarise(results, args.warmup)

    base = results[BASELINE]["base_heldout_loss"] if BASELINE in results else math.nan
    print(f"\nheld-out completion loss before training: {base:.4f} ({args.heldout} GSM8K rows); wall {wall:.0f} s")
    print(f"{'recipe':18} {'tokens/s':>9} {'x fp32':>7} {'tok/cpu-s':>9} {'x fp32':>7} {'s/step':>7} "
          f"{'loss 2nd half':>13} {'|dcurve|':>9} {'held-out':>9} {'d held-out':>10}  matches fp32")
    for name, r in rows.items():
        match = {None: "-", True: "yes", False: "no"}[r["matches_fp32"]]
        print(f"{name:18} {r['tokens_per_s']:9.1f} {r['speed_vs_fp32']:7.2f} {r['tokens_per_cpu_s']:9.1f} "
              f"{r['cpu_speed_vs_fp32']:7.2f} {r['seconds_per_step']:7.2f} "
              f"{r['last_half_loss']:13.4f} {r['curve_distance_to_fp32']:9.4f} {r['heldout_loss']:9.4f} "
              f"{r['heldout_vs_fp32']:+10.4f}  {match}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": MODEL, "args": vars(args), "wall_s": wall,
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "cpu": _cpu_name(),
        "base_heldout_loss": base, "summary": rows, "runs": results,
    }, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
