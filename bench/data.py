"""Data pipeline benchmark: token cache build vs raw `Tokenizer.encode_batch`, and batch fetch vs train step.

    python bench/data.py                      # bundled corpus + a generated 500 MB corpus (takes a while)
    python bench/data.py --size-mb 20         # a small generated corpus
    python bench/data.py --cases bundled,loader

For each corpus, one process trains the tokenizer (the default `tokenizer=bpe` settings), builds
lmforge's token cache (read, tokenize on all cores, write shards, split, baseline), then encodes
the same text with raw `Tokenizer.encode_batch` (in the same batches; only the encode calls are
timed). `ratio_vs_raw` = lmforge tokens/s over raw tokens/s. The cache uses `encode_batch_fast`
(the same ids without character offsets), so the bench also times raw `encode_batch_fast`
(`ratio_vs_raw_fast`): the ceiling the build itself can reach. `peak_rss_gb` is the process's peak
resident memory after tokenizer training and the cache build (before the raw pass).
The loader case trains the default model (`model=gpt`, data defaults) for a few steps under
Lightning's SimpleProfiler and compares fetching a batch with running a training step.

Prints a table and writes bench/results/data.json. Timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

TARGETS = {"ratio_vs_raw": ">= 0.8", "peak_rss_gb": "< 1.5 (500 MB corpus)", "fetch_fraction": "< 0.05"}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


def generate_corpus(path: Path, size_mb: float, seed: int = 0) -> Path:
    """One UTF-8 file of Zipf-distributed pseudo-words in lines and paragraphs, written in bounded memory."""
    rng = np.random.default_rng(seed)
    letters = list("etaoinshrdlucmfwypvbgkjqxz")
    freq = np.array(
        [
            12.7,
            9.1,
            8.2,
            7.5,
            7.0,
            6.7,
            6.3,
            6.1,
            6.0,
            4.3,
            4.0,
            2.8,
            2.8,
            2.4,
            2.2,
            2.4,
            2.0,
            1.9,
            1.0,
            1.5,
            2.0,
            0.8,
            0.2,
            0.1,
            0.2,
            0.1,
        ]
    )
    freq /= freq.sum()
    words = ["".join(rng.choice(letters, size=int(n), p=freq)) for n in rng.integers(1, 11, size=50_000)]
    words[:8] = ["the", "of", "and", "to", "a", "in", "is", "that"]
    # a word ends with a space (90%), a full stop and line break (9%) or a blank line (1%)
    forms = [w + " " for w in words] + [w + ".\n" for w in words] + [w.capitalize() + ".\n\n" for w in words]
    target = int(size_mb * 1e6)
    written = 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < target:
            idx = (rng.zipf(1.15, size=1_000_000) - 1) % len(words)
            kind = rng.choice(3, size=idx.size, p=[0.90, 0.09, 0.01])
            text = "".join(map(forms.__getitem__, (idx + kind * len(words)).tolist()))
            text = text[: target - written]
            fh.write(text)
            written += len(text.encode())
    return path


def run_case(name: str, corpus_path: str | None, cache_root: Path) -> dict:
    """Tokenizer training, lmforge cache build, then raw encode_batch on the same text (this process)."""
    from omegaconf import OmegaConf

    from lmforge.data.corpus import TextFiles
    from lmforge.data.shakespeare import ShakespeareCorpus
    from lmforge.data.token_cache import ENCODE_BATCH_CHARS, TokenCache, _text_batches
    from lmforge.data.tokenizer import TokenizerSpec, sample_texts

    default_cache = os.environ.get("LMFORGE_CACHE_DIR", str(Path.home() / ".cache/lmforge"))
    corpus = ShakespeareCorpus(default_cache) if corpus_path is None else TextFiles(corpus_path)
    tok_cfg = OmegaConf.load(REPO / "conf/tokenizer/bpe.yaml")
    spec = TokenizerSpec(
        kind=tok_cfg.kind,
        vocab_size=tok_cfg.vocab_size,
        min_frequency=tok_cfg.min_frequency,
        max_train_chars=tok_cfg.max_train_chars,
    )
    specials = {"eos": "<|endoftext|>"}
    text_bytes = sum(f.stat().st_size for f in corpus.files())

    t = time.perf_counter()
    fingerprint = corpus.fingerprint()
    fingerprint_s = time.perf_counter() - t
    t = time.perf_counter()
    tokenizer, tok_path = spec.load_or_train(
        lambda: sample_texts(corpus.documents(), spec.max_train_chars, corpus.size_bytes()),
        specials,
        fingerprint,
        cache_root,
    )
    train_s = time.perf_counter() - t
    eos = tokenizer.token_to_id(specials["eos"])

    t = time.perf_counter()
    cache = TokenCache.build(corpus, tokenizer, tok_path.parent.name, eos, 0.05, 0, cache_root)
    build_s = time.perf_counter() - t
    build_rss = peak_rss_gb()
    docs = cache.meta["documents"]["train"] + cache.meta["documents"]["val"]
    tokens = cache.meta["tokens"]["train"] + cache.meta["tokens"]["val"] - docs  # without the eos separators

    def raw(encode) -> tuple[int, float]:
        n, seconds = 0, 0.0
        for batch in _text_batches(corpus.documents(), 0, ENCODE_BATCH_CHARS):
            texts = [piece for _, piece in batch if piece is not None]
            t = time.perf_counter()
            encodings = encode(texts, add_special_tokens=False)
            seconds += time.perf_counter() - t
            n += sum(len(e.ids) for e in encodings)
            del encodings
        assert n == tokens, (n, tokens)  # the same text, the same tokens
        return n, seconds

    raw_tokens, raw_s = raw(tokenizer.encode_batch)
    _, fast_s = raw(tokenizer.encode_batch_fast)

    return {
        "corpus": name,
        "text_mb": round(text_bytes / 1e6, 1),
        "documents": docs,
        "tokens": tokens,
        "shards": {s: len(v) for s, v in cache.meta["shards"].items()},
        "fingerprint_s": round(fingerprint_s, 2),
        "tokenizer_train_s": round(train_s, 2),
        "build_s": round(build_s, 2),
        "tokens_per_sec": round(tokens / build_s),
        "raw_encode_s": round(raw_s, 2),
        "raw_tokens_per_sec": round(raw_tokens / raw_s),
        "ratio_vs_raw": round((tokens / build_s) / (raw_tokens / raw_s), 3),
        "raw_fast_tokens_per_sec": round(tokens / fast_s),
        "ratio_vs_raw_fast": round((tokens / build_s) / (tokens / fast_s), 3),
        "peak_rss_gb": round(build_rss, 3),
        "peak_rss_after_raw_gb": round(peak_rss_gb(), 3),
    }


def run_loader(steps: int, cache_root: Path) -> dict:
    """Fetch time vs step time of the default model in a real Lightning fit, from its SimpleProfiler."""
    import lightning as L
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class, instantiate
    from lightning.pytorch.profilers import SimpleProfiler
    from omegaconf import open_dict

    import lmforge  # noqa: F401  (registers the config resolvers)
    from lmforge.train import VOCAB_MULTIPLE, round_up

    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        cfg = compose("train", overrides=["logger=none", "callbacks=none", f"paths.output_dir={cache_root}"])
    L.seed_everything(cfg.seed)
    dm = instantiate(cfg.data)
    dm.build(get_class(cfg.model._target_).special_tokens)
    with open_dict(cfg):
        cfg.model.net.vocab_size = round_up(dm.vocab_size, VOCAB_MULTIPLE)
    model = instantiate(cfg.model)
    dm.set_batch_builder(model.batch_builder(cfg.data.seq_len, dm.special_ids))
    profiler = SimpleProfiler(dirpath=str(cache_root), filename="profile")  # its table goes to a file
    trainer = instantiate(
        cfg.trainer,
        max_steps=steps,
        val_check_interval=None,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        profiler=profiler,
        default_root_dir=str(cache_root),
    )
    trainer.fit(model, datamodule=dm)
    durations = profiler.recorded_durations
    fetch = durations["[_TrainingEpochLoop].train_dataloader_next"][2:]  # the first ones warm up
    step = durations["run_training_batch"][2:]
    return {
        "model": "gpt (default)",
        "seq_len": cfg.data.seq_len,
        "batch_size": cfg.data.batch_size,
        "num_workers": cfg.data.num_workers,
        "precision": str(trainer.precision),
        "steps_timed": len(step),
        "fetch_ms": round(1000 * float(np.mean(fetch)), 3),
        "step_ms": round(1000 * float(np.mean(step)), 1),
        "fetch_fraction": round(float(np.mean(fetch) / np.mean(step)), 5),
    }


def _child(args) -> None:
    cache_root = Path(args.workdir) / f"cache-{args.child}"
    if args.child == "loader":
        result = run_loader(args.steps, cache_root)
    else:
        result = run_case(args.child, args.corpus, cache_root)
    Path(args.result).write_text(json.dumps(result))


def _spawn(case: str, workdir: Path, extra: list[str]) -> dict:
    result = workdir / f"{case}.json"
    cmd = [sys.executable, __file__, "--child", case, "--workdir", str(workdir), "--result", str(result), *extra]
    subprocess.run(cmd, check=True)
    return json.loads(result.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=float, default=500.0, help="size of the generated corpus (MB)")
    p.add_argument("--cases", default="bundled,generated,loader", help="comma list of bundled, generated, loader")
    p.add_argument("--steps", type=int, default=12, help="training steps for the loader case")
    p.add_argument("--workdir", default=None, help="where to generate the corpus and caches (default: a temp dir)")
    p.add_argument("--out", default=str(REPO / "bench/results/data.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return _child(args)

    cases = args.cases.split(",")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        results, loader = [], None
        if "bundled" in cases:
            results.append(_spawn("shakespeare", work, []))
        if "generated" in cases:
            t = time.perf_counter()
            path = generate_corpus(work / "generated.txt", args.size_mb)
            print(f"generated {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t:.0f}s", flush=True)
            results.append(_spawn(f"generated-{args.size_mb:g}MB", work, ["--corpus", str(path)]))
            path.unlink()
        if "loader" in cases:
            loader = _spawn("loader", work, ["--steps", str(args.steps)])

    import tokenizers
    import torch

    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "tokenizers": tokenizers.__version__,
            "torch": torch.__version__,
            "note": "shared, contended machine; compare ratios measured in one run, not absolute times",
        },
        "targets": TARGETS,
        "cases": results,
        "loader": loader,
    }
    if results:  # the headline figures: the largest corpus
        head = max(results, key=lambda r: r["text_mb"])
        report.update(
            {
                k: head[k]
                for k in (
                    "corpus",
                    "tokens_per_sec",
                    "raw_tokens_per_sec",
                    "ratio_vs_raw",
                    "raw_fast_tokens_per_sec",
                    "ratio_vs_raw_fast",
                    "peak_rss_gb",
                )
            }
        )
    if loader:
        report["fetch_fraction"] = loader["fetch_fraction"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")

    cols = [
        "corpus",
        "text_mb",
        "tokens",
        "tokenizer_train_s",
        "build_s",
        "tokens_per_sec",
        "raw_tokens_per_sec",
        "ratio_vs_raw",
        "raw_fast_tokens_per_sec",
        "ratio_vs_raw_fast",
        "peak_rss_gb",
    ]
    rows = [[str(r[c]) for c in cols] for r in results]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)] if rows else []
    if rows:
        print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
        for row in rows:
            print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
    if loader:
        print(
            f"\nloader ({loader['model']}, batch {loader['batch_size']} x {loader['seq_len']}, "
            f"{loader['precision']}): fetch {loader['fetch_ms']} ms, step {loader['step_ms']} ms, "
            f"fetch/step {100 * loader['fetch_fraction']:.3f}%"
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
