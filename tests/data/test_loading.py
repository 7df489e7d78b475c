"""The train loader: deterministic for a seed, a disjoint share per DDP rank, resumable mid-epoch
(in isolation and through `python train.py ckpt_path=...`)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from conftest import TINY, run_dir_from_output, run_train

from lmforge.data.corpus import TextFiles
from lmforge.data.datamodule import LMDataModule
from lmforge.data.loading import ResumableDataLoader, ResumableSampler
from lmforge.data.tokenizer import TokenizerSpec
from lmforge.objectives.clm import PackedCausalBatches


class RandomMaskBatches(PackedCausalBatches):
    """A builder that draws random numbers, as MLM masking does."""

    def __call__(self, blocks, rng):
        batch = super().__call__(blocks, rng)
        batch["noise"] = torch.from_numpy(rng.random(batch["input_ids"].shape))
        return batch


def make_dm(corpus, cache, seed=0, num_workers=0, builder=None) -> LMDataModule:
    dm = LMDataModule(
        corpus=TextFiles(str(corpus)),
        tokenizer=TokenizerSpec("bpe", 300),
        cache_dir=str(cache),
        seq_len=16,
        batch_size=4,
        seed=seed,
        num_workers=num_workers,
    )
    dm.build({"eos": "<|endoftext|>"})
    dm.set_batch_builder(builder or PackedCausalBatches(16))
    return dm


def ids(batches):
    return [b["input_ids"] for b in batches]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumed_loader_yields_exactly_the_remaining_batches(text_corpus, tmp_path, num_workers):
    full = ids(make_dm(text_corpus, tmp_path, num_workers=num_workers).train_dataloader())
    assert len(full) > 20

    loader = make_dm(text_corpus, tmp_path, num_workers=num_workers).train_dataloader()
    it = iter(loader)
    seen = [next(it)["input_ids"] for _ in range(7)]
    state = loader.state_dict()
    del it

    resumed = make_dm(text_corpus, tmp_path, num_workers=num_workers).train_dataloader()
    resumed.load_state_dict(state)
    rest = ids(resumed)
    assert same(seen, full[:7]) and same(rest, full[7:])
    assert same(ids(resumed), full)  # the resumed epoch over, a fresh pass is the whole epoch again


def test_order_is_fixed_by_seed_and_epoch(text_corpus, tmp_path):
    a = make_dm(text_corpus, tmp_path, seed=1).train_dataloader()
    b = make_dm(text_corpus, tmp_path, seed=1).train_dataloader()
    c = make_dm(text_corpus, tmp_path, seed=2).train_dataloader()
    assert same(ids(a), ids(b)) and not same(ids(a), ids(c))
    epoch0 = ids(a)
    a.sampler.set_epoch(1)
    epoch1 = ids(a)
    assert not same(epoch0, epoch1)
    key = lambda t: t.numpy().tobytes()  # noqa: E731  every block once per epoch, in another order
    assert sorted(map(key, torch.cat(epoch0))) == sorted(map(key, torch.cat(epoch1)))


def test_checkpoint_at_the_end_of_an_epoch_resumes_with_the_next_epoch(text_corpus, tmp_path):
    loader = make_dm(text_corpus, tmp_path).train_dataloader()
    list(loader)
    state = loader.state_dict()
    resumed = make_dm(text_corpus, tmp_path).train_dataloader()
    resumed.load_state_dict(state)
    nxt = make_dm(text_corpus, tmp_path).train_dataloader()
    nxt.sampler.set_epoch(1)
    assert same(ids(resumed), ids(nxt))


def test_ddp_ranks_get_disjoint_shares_of_the_epoch():
    data = list(range(103))
    shares = [list(ResumableSampler(data, num_replicas=3, rank=r, seed=5)) for r in range(3)]
    assert all(len(s) == 103 // 3 for s in shares)
    flat = [i for s in shares for i in s]
    assert len(set(flat)) == len(flat) == 3 * (103 // 3)
    one = list(ResumableSampler(data, num_replicas=1, rank=0, seed=5))
    assert sorted(flat) == sorted(one[: 3 * (103 // 3)])  # the ranks split the single-process order


def _loader(num_replicas: int, rank: int, batch_size: int) -> ResumableDataLoader:
    data = list(range(103))
    return ResumableDataLoader(
        data, batch_size=batch_size, sampler=ResumableSampler(data, num_replicas, rank, seed=5), drop_last=True
    )


def _steps(loaders: list[ResumableDataLoader]) -> list[set[int]]:
    """The examples each optimizer step reads, over all ranks."""
    return [{int(i) for b in batches for i in b} for batches in zip(*loaders)]


@pytest.mark.parametrize(("before", "after"), [((1, 16), (2, 8)), ((2, 8), (1, 16)), ((2, 4), (1, 12))])
def test_a_resume_on_another_data_parallel_layout_continues_with_the_next_examples(before, after):
    """A TP group (one replica) resumed by 2 FSDP ranks, and back: the same examples per step as if the run had not
    stopped, when the examples read so far make whole steps of the new layout; else the epoch starts over."""
    (r0, b0), (r1, b1) = before, after
    full = _steps([_loader(r1, r, b1) for r in range(r1)])
    stopped = [_loader(r0, r, b0) for r in range(r0)]
    iters = [iter(loader) for loader in stopped]
    for _ in range(4):  # 4 steps of the first layout
        for it in iters:
            next(it)
    resumed = [_loader(r1, r, b1) for r in range(r1)]
    state = stopped[0].state_dict()
    if 4 * r0 * b0 % (r1 * b1):
        with pytest.warns(UserWarning, match="restarts from its first batch"):
            for loader in resumed:
                loader.load_state_dict(state)
        assert _steps(resumed) == full
        return
    for loader in resumed:
        loader.load_state_dict(state)
    done = 4 * r0 * b0 // (r1 * b1)
    assert _steps(resumed) == full[done:]


def test_random_batch_builders_get_a_per_batch_rng_independent_of_workers(text_corpus, tmp_path):
    def noise(num_workers):
        dm = make_dm(text_corpus, tmp_path, num_workers=num_workers, builder=RandomMaskBatches(16))
        return [b["noise"] for b in dm.train_dataloader()]

    a, b = noise(0), noise(2)
    assert same(a, b)
    assert not torch.equal(a[0], a[1])


def test_train_resumed_mid_epoch_sees_the_same_batches_as_an_uninterrupted_run(text_corpus):
    ckpt = [
        "+callbacks.model_checkpoint.every_n_train_steps=5",
        "callbacks.model_checkpoint.save_top_k=-1",
        "callbacks.model_checkpoint.monitor=null",
        "callbacks.model_checkpoint.filename='step{step}'",
        "callbacks.model_checkpoint.save_last=false",
    ]
    base = [
        *TINY,
        "data=text",
        f"data.path={text_corpus}",
        "logger=csv",
        "trainer.max_steps=16",
        "trainer.val_check_interval=8",
        "callbacks.samples.max_new_tokens=2",
    ]
    full = run_train([*base, *ckpt])
    assert full.returncode == 0, full.stderr[-3000:]
    full_dir = run_dir_from_output(full.stdout)
    assert sorted(p.name for p in (full_dir / "checkpoints").iterdir()) == ["step10.ckpt", "step15.ckpt", "step5.ckpt"]
    resumed = run_train([*base, f"ckpt_path={full_dir / 'checkpoints/step5.ckpt'}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr  # Lightning's warning for plain loaders

    def losses(run_dir):
        rows = csv.DictReader(open(run_dir / "csv/metrics.csv"))
        return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}

    a, b = losses(full_dir), losses(run_dir_from_output(resumed.stdout))
    assert sorted(b) == list(range(5, 16)), sorted(b)
    # same batches, same weights, same schedule: the same losses step for step
    assert np.allclose([a[s] for s in sorted(b)], [b[s] for s in sorted(b)], rtol=0, atol=1e-5), (a, b)


def test_lightning_keeps_our_sampler_under_ddp_and_each_rank_takes_its_share(text_corpus, tmp_path):
    import lightning as L
    from lightning.pytorch.trainer.states import RunningStage

    dm = make_dm(text_corpus, tmp_path)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)  # not launched: no fit
    assert trainer._accelerator_connector.is_distributed
    dm.trainer = trainer
    loader = dm.train_dataloader()
    prepared = trainer._data_connector._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING)
    assert prepared is loader and isinstance(loader.sampler, ResumableSampler)  # no DistributedSampler injected
    assert loader.sampler.num_replicas == 2 and loader.sampler.rank == 0
    assert len(loader) == (len(dm._dataset("train")) // 2) // 4


@pytest.mark.distributed
def test_ddp_ranks_build_the_cache_once_and_train_on_their_shares(text_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))  # a cold cache: both ranks start building
    proc = run_train(
        [
            *TINY,
            "data=text",
            f"data.path={text_corpus}",
            "logger=csv",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_steps=6",
            "trainer.val_check_interval=3",
            "callbacks.samples.max_new_tokens=2",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    s = json.loads((run_dir_from_output(proc.stdout) / "summary.json").read_text())
    assert s["status"] == "completed" and s["steps"] == 6
    assert s["tokens"] == 6 * 8 * 32 * 2  # two ranks, each its own batch per step
    assert len(list((tmp_path / "cache" / "tokens").iterdir())) == 2  # one entry and its lock file


def test_a_pending_skip_does_not_leak_into_another_epoch(text_corpus, tmp_path):
    loader = make_dm(text_corpus, tmp_path).train_dataloader()
    it = iter(loader)
    for _ in range(3):
        next(it)
    resumed = make_dm(text_corpus, tmp_path).train_dataloader()
    resumed.load_state_dict(loader.state_dict())
    resumed.sampler.set_epoch(1)  # Lightning ended epoch 0 early (limit_train_batches) and moved on
    fresh = make_dm(text_corpus, tmp_path).train_dataloader()
    fresh.sampler.set_epoch(1)
    assert same(ids(resumed), ids(fresh))
