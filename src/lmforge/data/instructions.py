"""Instruction data for supervised fine-tuning (SFT) of decoders: `data=instructions data.path=<file.jsonl>`.

Each JSONL line (`.gz` read too) is one example, either
  {"prompt": "...", "response": "..."}                        (data.prompt_field / data.response_field), or
  {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   (data.messages_field)
a chat whose last message is the assistant's.

A chat template (`data.template`, one string per role with `{content}`) renders an example as text segments; an
assistant message is its marker (the text before `{content}`, not trained on), then its content and whatever the
template puts after `{content}`, then eos: these are trained on. Each segment is tokenized on its own, so the prompt
a model is given at generation time (`render_prompt`) tokenizes exactly as it did in training. Every assistant turn
of a chat is trained on; `val/exact_match` scores the last.

Examples are tokenized once into a cache entry (ids, a trained-on flag per token, offsets: data/locking.build_once),
split into train and validation as data=pairs does (a separate `data.val_path`, or a seeded `data.val_fraction`)
and optionally test (a seeded `data.test_fraction` of the training examples, or a file, `data.test_path`: both
padded.deal_splits) and served in length buckets (padded.LengthBuckets), padded per batch by the objective's
collator (protocols.MakesInstructionBatches). An example longer than `data.seq_len` tokens is dropped
(`data.overlong=drop`, counted and reported) or stops the run (`data.overlong=error`): cutting it would cut the
response and its eos, teaching the model not to stop.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from lmforge.console import say
from lmforge.data.corpus import read_text
from lmforge.data.locking import build_once
from lmforge.data.padded import PaddedLoaders, bucketed_loader, check_test_options, deal_splits
from lmforge.data.token_cache import token_dtype
from lmforge.data.tokenizer import TokenizerSpec, special_token_ids
from lmforge.errors import ConfigError, DataError
from lmforge.protocols import MakesInstructionBatches

ROLES = ("system", "user", "assistant")
# The default template (conf/data/instructions.yaml has the same): Alpaca-style plain-text markers, which any
# tokenizer encodes without new tokens.
DEFAULT_TEMPLATE = {
    "system": "### System:\n{content}\n\n",
    "user": "### Instruction:\n{content}\n\n",
    "assistant": "### Response:\n{content}",
}
OVERLONG = ("drop", "error")

Message = tuple[str, str]  # (role, content)
Segment = tuple[str | None, bool]  # (text, or None for the eos token; trained on)


# ------------------------------------------------------------------ the template


def check_template(template: dict[str, str] | None) -> dict[str, str]:
    """The template with defaults for roles it leaves out; a ConfigError for a role or text that cannot work."""
    merged = {**DEFAULT_TEMPLATE, **(dict(template) if template else {})}
    for role, text in merged.items():
        if role not in ROLES:
            raise ConfigError(f"data.template.{role}: unknown role; the template has {', '.join(ROLES)}.")
        if not isinstance(text, str) or text.count("{content}") != 1:
            raise ConfigError(
                f"data.template.{role}={text!r} must contain {{content}} exactly once (where the message goes)."
            )
    return merged


def render(messages: list[Message], template: dict[str, str]) -> list[Segment]:
    """An example as segments: system/user messages and each assistant marker untrained; each assistant content,
    its template suffix and an eos (None) trained."""
    segments: list[Segment] = []
    for role, content in messages:
        before, after = template[role].split("{content}")
        if role == "assistant":
            segments += [(before, False), (content + after, True), (None, True)]
        else:
            segments.append((before + content + after, False))
    return [(t, trained) for t, trained in segments if t is None or t]


def render_prompt(prompt: str, template: dict[str, str], system: str | None = None) -> str:
    """The text a model is given to answer `prompt` (what `python -m lmforge.generate` sends an SFT run): the
    user message and the assistant marker, as in training."""
    messages: list[Message] = ([("system", system)] if system else []) + [("user", prompt)]
    text = "".join(t for t, _ in render(messages, template) if t is not None)
    return text + template["assistant"].split("{content}")[0]


# ------------------------------------------------------------------ reading


def parse_example(obj: Any, where: str, fields: dict[str, str]) -> list[Message]:
    """One JSONL object as messages; a DataError naming `where` (file:line) and the fix."""
    prompt_f, response_f, messages_f = fields["prompt"], fields["response"], fields["messages"]
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with {prompt_f!r}/{response_f!r} or {messages_f!r}.")
    if messages_f in obj:
        chat = obj[messages_f]
        if not isinstance(chat, list) or not chat:
            raise DataError(f"{where}: {messages_f!r} must be a non-empty list of {{role, content}} objects.")
        out: list[Message] = []
        for k, m in enumerate(chat):
            if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
                raise DataError(
                    f"{where}: message {k} must be an object with a role ({', '.join(ROLES)}) and a string "
                    f"content, found {json.dumps(m)[:120]}."
                )
            out.append((m["role"], m["content"]))
        if out[-1][0] != "assistant":
            raise DataError(f"{where}: the last message must be the assistant's (the response to train on).")
        return out
    for field in (prompt_f, response_f):
        if not isinstance(obj.get(field), str):
            what = "has no field" if field not in obj else "has a non-string field"
            raise DataError(
                f"{where}: the line {what} {field!r} (fields: {sorted(obj)}). Set data.prompt_field / "
                f"data.response_field (or data.messages_field for chats) to the file's names."
            )
    return [("user", obj[prompt_f]), ("assistant", obj[response_f])]


def read_instructions(
    path: Path, fields: dict[str, str], errors: str = "strict", key: str = "data.path"
) -> list[list[Message]]:
    """The examples of a JSONL file; bad lines are named by file and line."""
    if not path.is_file():
        raise DataError(f"{key}={str(path)!r}: no such file. Give a .jsonl file of prompt/response or messages.")
    examples = []
    for n, line in enumerate(read_text(path, errors).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg}).") from None
        examples.append(parse_example(obj, f"{path}:{n}", fields))
    if not examples:
        raise DataError(f"{key}={str(path)!r} holds no examples (an empty file?).")
    return examples


class InstructionsFile:
    """The instructions source of data=instructions: one JSONL file (and optionally a separate validation file).
    A source gives `name`, `fingerprint()` and `read()`: a list of examples (split by val_fraction), or
    {"train": [...], "val": [...]}. Generated sources (data/reverse_words.py) give the same."""

    def __init__(self, path: str, val_path: str | None = None, fields: dict[str, str] | None = None, errors="strict"):
        self.path = Path(path).expanduser()
        self.val_path = Path(val_path).expanduser() if val_path else None
        self.fields = fields or {"prompt": "prompt", "response": "response", "messages": "messages"}
        self.errors = errors
        self.name = str(self.path) if self.val_path is None else f"{self.path} + {self.val_path}"

    def read(self) -> dict[str, list[list[Message]]] | list[list[Message]]:
        train = read_instructions(self.path, self.fields, self.errors, "data.path")
        if self.val_path is None:
            return train
        return {"train": train, "val": read_instructions(self.val_path, self.fields, self.errors, "data.val_path")}

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps([self.fields, self.errors]).encode())
        for p, key in ((self.path, "data.path"), (self.val_path, "data.val_path")):
            if p is not None:
                if not p.is_file():
                    raise DataError(
                        f"{key}={str(p)!r}: no such file. Give a .jsonl file of prompt/response or messages."
                    )
                h.update(p.name.encode())
                h.update(p.read_bytes())
        return h.hexdigest()


# ------------------------------------------------------------------ the token cache


@dataclass(frozen=True)
class InstructionExample:
    """One tokenized example: `ids` (n,), `trained` (n,) True on the tokens the loss covers, `response_start`:
    where the last response begins (ids before it are the prompt `val/exact_match` decodes from)."""

    ids: np.ndarray
    trained: np.ndarray
    response_start: int


def tokenize(segments: list[Segment], tokenizer, eos_id: int) -> tuple[list[int], list[bool], int]:
    """(ids, trained flags, start of the last trained run) of rendered segments."""
    ids: list[int] = []
    trained: list[bool] = []
    start = 0
    for text, on in segments:
        piece = [eos_id] if text is None else tokenizer.encode(text, add_special_tokens=False).ids
        if on and not (trained and trained[-1]):
            start = len(ids)
        ids += piece
        trained += [on] * len(piece)
    return ids, trained, start


class InstructionsCache:
    """Tokenized examples of both splits on disk, per split: `{split}.bin` (flat ids), `{split}.mask.bin` (uint8,
    1 where trained on), `{split}.idx` (int64 offsets, one more than examples), `{split}.start.npy` (where each
    last response starts, relative to its example); meta.json has counts and the unigram baseline."""

    def __init__(self, folder: Path, meta: dict):
        self.dir, self.meta = folder, meta

    @classmethod
    def build(
        cls,
        source,
        tokenizer,
        tokenizer_key: str,
        eos_id: int,
        template: dict[str, str],
        val_fraction: float,
        split_seed: int,
        cache_dir: Path,
        test_fraction: float = 0.0,
        test_file: tuple[Path, dict[str, str], str] | None = None,  # data.test_path, its fields and errors
    ) -> InstructionsCache:
        # without a test split, the key (and so the cache entry) is what it always was
        test_key: list[Any] = [test_fraction] if test_fraction else []
        if test_file is not None:
            test_key = [test_file[0].name, hashlib.blake2b(test_file[0].read_bytes(), digest_size=16).hexdigest()]
        key = hashlib.blake2b(
            json.dumps(
                ["instructions-v1", source.fingerprint(), tokenizer_key, template, val_fraction, split_seed, *test_key]
            ).encode(),
            digest_size=10,
        ).hexdigest()
        vocab = tokenizer.get_vocab_size()
        dtype = token_dtype(vocab)

        def build(tmp: Path) -> None:
            test = None if test_file is None else read_instructions(*test_file, key="data.test_path")
            data = deal_splits(source.read(), val_fraction, test_fraction, split_seed, test)
            if not data["val"]:
                raise DataError(
                    f"{source.name}: no validation examples (data.val_fraction={val_fraction} of "
                    f"{len(data['train'])}); raise data.val_fraction or give data.val_path."
                )
            meta: dict[str, Any] = {"dtype": dtype.name, "vocab_size": vocab, "eos_id": eos_id, "examples": {}}
            counts = {}
            for split, examples in data.items():
                rows = [tokenize(render(m, template), tokenizer, eos_id) for m in examples]
                lengths = np.array([len(ids) for ids, _, _ in rows], dtype=np.int64)
                np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64).tofile(tmp / f"{split}.idx")
                np.array([i for ids, _, _ in rows for i in ids], dtype=dtype).tofile(tmp / f"{split}.bin")
                mask = np.array([t for _, tr, _ in rows for t in tr], dtype=np.uint8)
                mask.tofile(tmp / f"{split}.mask.bin")
                np.save(tmp / f"{split}.start.npy", np.array([s for _, _, s in rows], dtype=np.int64))
                meta["examples"][split] = len(rows)
                flat = np.fromfile(tmp / f"{split}.bin", dtype=dtype).astype(np.int64)
                counts[split] = np.bincount(flat[mask.astype(bool)], minlength=vocab).astype(np.float64)
            meta["unigram_val_loss"] = unigram_loss(counts["train"], counts["val"])
            if "test" in counts:
                meta["unigram_test_loss"] = unigram_loss(counts["train"], counts["test"])
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

        entry = build_once(Path(cache_dir) / "instructions" / key, build)
        return cls(entry, json.loads((entry / "meta.json").read_text()))


def unigram_loss(train_counts: np.ndarray, val_counts: np.ndarray) -> float:
    """Cross-entropy (nats/token) on the val response tokens of an add-one smoothed unigram model of the train
    response tokens: the floor an SFT model must beat on val/loss."""
    logp = np.log(train_counts + 1.0) - np.log(train_counts.sum() + len(train_counts))
    return float(-(val_counts * logp).sum() / max(val_counts.sum(), 1.0))


class TokenInstructions(Dataset):
    """The tokenized examples of one split, those of at most `max_len` tokens (`keep`). Offsets are read at once;
    ids and masks are memmapped lazily, so the dataset pickles cheaply into loader workers."""

    def __init__(self, folder: Path, split: str, dtype: str, max_len: int):
        self.folder, self.split, self.dtype = folder, split, dtype
        self.idx = np.fromfile(folder / f"{split}.idx", np.int64)
        self.starts = np.load(folder / f"{split}.start.npy")
        all_lengths = np.diff(self.idx)
        self.keep = np.flatnonzero(all_lengths <= max_len)
        self.longest, self.dropped = int(all_lengths.max(initial=0)), len(all_lengths) - len(self.keep)
        self.lengths = all_lengths[self.keep]
        self._maps: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.keep)

    def _map(self, name: str, dtype) -> np.ndarray:
        if name not in self._maps:
            path = self.folder / name
            self._maps[name] = np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype)
        return self._maps[name]

    def __getitem__(self, i: int) -> InstructionExample:
        j = int(self.keep[i])
        a, b = self.idx[j], self.idx[j + 1]
        ids = self._map(f"{self.split}.bin", self.dtype)
        mask = self._map(f"{self.split}.mask.bin", np.uint8)
        return InstructionExample(
            np.asarray(ids[a:b], dtype=np.int64), np.asarray(mask[a:b], dtype=bool), int(self.starts[j])
        )

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}


# ------------------------------------------------------------------ the data module


class InstructionsDataModule(PaddedLoaders, L.LightningDataModule):
    """Same interface as LMDataModule (protocols.RunData), serving padded instruction examples. `seq_len` is the
    longest example (prompt, response and eos) kept."""

    def __init__(
        self,
        tokenizer: TokenizerSpec,
        cache_dir: str,
        path: str | None = None,
        val_path: str | None = None,
        source: Any = None,  # a generated source (data=reverse_words) instead of a file
        prompt_field: str = "prompt",
        response_field: str = "response",
        messages_field: str = "messages",
        errors: str = "strict",
        template: dict[str, str] | None = None,
        seq_len: int = 256,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        val_fraction: float = 0.05,
        split_seed: int = 0,
        bucket_size: int = 50,
        overlong: str = "drop",
        test_fraction: float = 0.0,  # share of the training examples held out for a test split (0: none)
        test_path: str | None = None,  # or a JSONL file of test examples (read with data.path's fields)
        num_workers: int = 0,
        pin_memory: bool | None = None,
    ):
        super().__init__()
        for key, value, least in (("data.seq_len", seq_len, 2), ("data.batch_size", batch_size, 1)):
            if value < least:
                raise ConfigError(f"{key}={value} must be at least {least}.")
        if overlong not in OVERLONG:
            raise ConfigError(f"data.overlong={overlong!r}: choose drop (skip, and say how many) or error.")
        fields = {"prompt": prompt_field, "response": response_field, "messages": messages_field}
        if source is None:
            if not path:
                raise ConfigError("data=instructions needs data.path=<file.jsonl> (prompt/response or messages).")
            source = InstructionsFile(path, val_path, fields, errors)
        test_file = check_test_options(0.0 if val_path else val_fraction, test_fraction, test_path)
        self.test_fraction = test_fraction
        self.test_file = None if test_file is None else (test_file, fields, errors)
        self.source, self.template = source, check_template(template)
        self.tokenizer_spec, self.cache_dir = tokenizer, Path(cache_dir).expanduser()
        self.seq_len, self.batch_size, self.val_batch_size = seq_len, batch_size, val_batch_size or batch_size
        self.val_fraction, self.split_seed, self.bucket_size = val_fraction, split_seed, bucket_size
        self.overlong, self.num_workers, self.pin_memory = overlong, num_workers, pin_memory
        self.tokenizer: Any = None  # a tokenizers.Tokenizer, once build() ran
        self.tokenizer_path: Path | None = None
        self.cache: InstructionsCache | None = None
        self.special_ids: dict[str, int] = {}
        self.splits: dict[str, TokenInstructions] = {}
        self.batch_builder: Any = None  # the objective's instruction collator, once set_batch_builder() ran

    def _texts(self) -> Iterator[str]:
        """Rendered examples (markers included, eos left out): what a tokenizer is trained on."""
        data = self.source.read()
        for examples in data.values() if isinstance(data, dict) else [data]:
            for messages in examples:
                yield "".join(t for t, _ in render(messages, self.template) if t is not None)

    def build(self, specials: dict[str, str]) -> None:
        """Fit or load the tokenizer on the rendered examples and tokenize them. Safe on every rank."""
        if "eos" not in specials or "pad" not in specials:
            raise ConfigError(
                "data=instructions serves prompt/response examples, which only the SFT objective trains on (its "
                "batches need eos and pad tokens): use model=gpt_sft or model=llama_sft."
            )
        self.tokenizer, self.tokenizer_path = self.tokenizer_spec.load_or_train(
            self._texts, specials, self.source.fingerprint(), self.cache_dir
        )
        self.special_ids = special_token_ids(self.tokenizer, specials)
        self.cache = InstructionsCache.build(
            self.source,
            self.tokenizer,
            self.tokenizer_path.parent.name,
            self.special_ids["eos"],
            self.template,
            self.val_fraction,
            self.split_seed,
            self.cache_dir,
            test_fraction=self.test_fraction,
            test_file=self.test_file,
        )
        for split in ("train", "val", "test")[: 3 if "test" in self.cache.meta["examples"] else 2]:
            self.splits[split] = data = TokenInstructions(self.cache.dir, split, self.cache.meta["dtype"], self.seq_len)
            if data.dropped and self.overlong == "error":
                raise DataError(
                    f"{data.dropped} {split} example(s) of {self.source.name} are longer than data.seq_len="
                    f"{self.seq_len} tokens (the longest: {data.longest}). Raise data.seq_len (up to "
                    "model.net.max_seq_len), shorten them, or set data.overlong=drop to skip them."
                )
            if not len(data):
                raise DataError(
                    f"every {split} example of {self.source.name} is longer than data.seq_len={self.seq_len} "
                    f"tokens (the longest: {data.longest}); raise data.seq_len."
                )
            if data.dropped:
                say(f"data: dropped {data.dropped} {split} example(s) longer than data.seq_len={self.seq_len}")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def has_test(self) -> bool:
        """Whether a test split exists (data.test_fraction > 0 or data.test_path): test_dataloader() serves it."""
        self._split("train")  # build() must have run
        return "test" in self.splits

    def _split(self, split: str) -> TokenInstructions:
        if split not in self.splits:
            raise RuntimeError("InstructionsDataModule.build() must run first")
        return self.splits[split]

    def summary_facts(self) -> dict[str, Any]:
        train, val = self._split("train"), self._split("val")
        data: dict[str, Any] = {
            "corpus": self.source.name,
            "train_tokens": int(train.lengths.sum()),
            "val_tokens": int(val.lengths.sum()),
            "vocab_size": self.vocab_size,
            "train_examples": len(train),
            "val_examples": len(val),
            "dropped_overlong": train.dropped + val.dropped,
        }
        meta = self.cache.meta if self.cache else {}
        baseline = {"unigram_val_loss": meta.get("unigram_val_loss", float("nan"))}
        if self.has_test:
            test = self._split("test")
            data.update(test_tokens=int(test.lengths.sum()), test_examples=len(test))
            data["dropped_overlong"] += test.dropped
            baseline["unigram_test_loss"] = meta["unigram_test_loss"]
        return {"data": data, "baseline": baseline}

    @property
    def block_len(self) -> int:
        return self.batch_builder.block_len

    @property
    def block_builder(self) -> None:
        """None: examples are padded to the longest of each batch, so no one batch has the shapes of all (the
        pre-run FLOP forecast falls back to 6 x params x tokens)."""
        return None

    def set_batch_builder(self, builder: Any) -> None:
        if not isinstance(builder, MakesInstructionBatches):
            raise ConfigError(
                "data=instructions serves prompt/response examples, which only the SFT objective trains on "
                "(loss on responses only): use model=gpt_sft or model=llama_sft."
            )
        train = self._split("train")
        if len(train) < self.batch_size:
            raise DataError(
                f"the train split of {self.source.name} has {len(train)} examples, fewer than one batch of "
                f"data.batch_size={self.batch_size}; lower data.batch_size or add examples."
            )
        # the tokens of an average example: token budgets (max_tokens) count real tokens, as tokens_seen does
        self.batch_builder = builder.instruction_collator(max(1, round(float(train.lengths.mean()))))

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        if self.batch_builder is None:
            raise RuntimeError("build() and set_batch_builder() must run before loaders are made")
        data = self._split(split)
        sampler = RandomSampler(data) if shuffle else SequentialSampler(data)
        # validation in split order (a window of one batch: nothing moves across batches), so the first examples
        # that val/exact_match decodes are a fixed sample of the split, not its shortest
        bucket_size = self.bucket_size if shuffle else 1
        return bucketed_loader(
            data,
            sampler,
            data.lengths.tolist(),
            batch_size,
            bucket_size,
            shuffle,
            self.batch_builder.for_split(split),
            self.num_workers,
            self.pin_memory,
        )
