"""OpenAI CLIP byte-pair-encoding tokenizer, built offline from the bundled vocabulary.

Stable Diffusion's text encoders (CLIP ViT-L/14 for SD 1.x, OpenCLIP ViT-H/14 and
ViT-bigG/14 for SD 2.x / SDXL) all use OpenAI's CLIP BPE vocabulary. This module
reproduces OpenAI's ``SimpleTokenizer`` ids exactly:

* text clean-up is done in Python the way OpenAI does it (ftfy, double HTML
  unescape, whitespace collapsing with the ``regex`` module, ``str.lower``);
* the text is split into pieces with OpenAI's own pattern (``regex`` module);
* only the byte-pair merging of each piece runs in the Rust ``tokenizers`` BPE
  model, built in memory from ``clip_vocab/bpe_simple_vocab_16e6.txt.gz``.

The matching ``transformers.CLIPTokenizer`` (needed to save diffusers-style
folders and to compare with diffusers pipelines) is available as ``.hf``; it is
built lazily from the same vocabulary so that loading this tokenizer does not
import transformers. Note that ``.hf`` does not run OpenAI's clean-up itself:
feed it ``clean(text)`` when ids must match.
"""

from __future__ import annotations

import functools
import gzip
import html
from collections.abc import Iterable
from pathlib import Path

import ftfy
import regex

VOCAB_DIR = Path(__file__).resolve().parent / "clip_vocab"
DEFAULT_BPE_PATH = VOCAB_DIR / "bpe_simple_vocab_16e6.txt.gz"

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# Token with id 0; OpenCLIP pads with id 0.
ZERO_PAD_TOKEN = "!"
WORD_END = "</w>"

MAX_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2  # 48,894 merges, as in OpenAI's SimpleTokenizer
VOCAB_SIZE = 256 * 2 + NUM_MERGES + 2  # 49,408

# OpenAI's pre-tokenization pattern (text is already lower-cased when it is applied).
_SPLIT_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable unicode character map of GPT-2 / CLIP BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = printable[:]
    code_points = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            code_points.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(byte_values, code_points)}


@functools.lru_cache(maxsize=4)
def read_bpe_file(bpe_path: str | Path = DEFAULT_BPE_PATH) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Read the gzipped BPE file into ``(vocab, merges)`` exactly as OpenAI's SimpleTokenizer does.

    ``vocab`` maps token strings to ids (49,408 entries); ``merges`` lists the merge
    pairs in rank order. Callers must not mutate the returned objects (they are cached).
    """
    lines = gzip.decompress(Path(bpe_path).read_bytes()).decode("utf-8").split("\n")
    # The first line is a version header; OpenAI keeps lines 1..48894.
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{bpe_path}: not a CLIP BPE merges file (expected {NUM_MERGES} pairs)")
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + WORD_END for c in byte_chars]
    tokens.extend(a + b for a, b in merges)
    tokens.extend([BOS_TOKEN, EOS_TOKEN])
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"{bpe_path}: built {len(vocab)} vocabulary entries, expected {VOCAB_SIZE}")
    return vocab, merges  # type: ignore[return-value]


def basic_clean(text: str) -> str:
    """OpenAI CLIP's ``basic_clean``: ftfy repair, HTML unescape twice, strip."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text: str) -> str:
    """OpenAI CLIP's ``whitespace_clean``: collapse whitespace runs to one space, strip."""
    return _WHITESPACE.sub(" ", text).strip()


class ClipTokenizer:
    """Exact OpenAI CLIP tokenizer (ids identical to ``clip.simple_tokenizer.SimpleTokenizer``).

    ``pad_with_eos=True`` pads with ``<|endoftext|>`` (49407, as SD 1.x / HF CLIP);
    ``False`` pads with id 0 (``!``, as OpenCLIP for SD 2.x and SDXL's second encoder).
    """

    bos_id = 49406
    eos_id = 49407
    max_length = MAX_LENGTH
    vocab_size = VOCAB_SIZE

    def __init__(self, pad_with_eos: bool = True, bpe_path: str | Path = DEFAULT_BPE_PATH):
        from tokenizers import Tokenizer, pre_tokenizers
        from tokenizers.models import BPE

        self.pad_with_eos = bool(pad_with_eos)
        self.bpe_path = Path(bpe_path)
        vocab, merges = read_bpe_file(self.bpe_path)
        self._vocab = vocab
        self._merges = merges
        self._id_to_token = list(vocab)  # ids are 0..N-1 in insertion order
        if vocab[BOS_TOKEN] != self.bos_id or vocab[EOS_TOKEN] != self.eos_id:
            raise ValueError(f"{bpe_path}: unexpected special token ids")
        self.pad_token = EOS_TOKEN if self.pad_with_eos else ZERO_PAD_TOKEN
        self.pad_id = vocab[self.pad_token]

        # BPE merging only: the text reaches this model already cleaned and split into
        # OpenAI's pieces; ByteLevel (without its own regex) maps bytes to the BPE alphabet.
        bpe = Tokenizer(
            BPE(
                vocab=vocab,
                merges=merges,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix=WORD_END,
                fuse_unk=False,
                unk_token=EOS_TOKEN,
            )
        )
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        self._bpe = bpe
        self._byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        self._hf = None

    # ------------------------------------------------------------------ text
    @staticmethod
    def clean(text: str, lower: bool = True) -> str:
        """OpenAI's clean-up: ftfy, HTML unescape twice, whitespace collapsing, lower-casing.

        The result is exactly the string OpenAI's tokenizer splits into BPE pieces.
        """
        text = whitespace_clean(basic_clean(text))
        return text.lower() if lower else text

    @staticmethod
    def split_pieces(cleaned: str) -> list[str]:
        """OpenAI's pre-tokenization of already-cleaned text into word/number/symbol pieces."""
        return _SPLIT_PATTERN.findall(cleaned)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without bos/eos and without truncation."""
        pieces = self.split_pieces(self.clean(text))
        ids: list[int] = []
        run: list[str] = []
        for piece in pieces:
            if piece == BOS_TOKEN or piece == EOS_TOKEN:
                # OpenAI maps the literal special-token strings straight to their ids.
                if run:
                    ids.extend(self._encode_pieces(run))
                    run = []
                ids.append(self._vocab[piece])
            else:
                run.append(piece)
        if run:
            ids.extend(self._encode_pieces(run))
        return ids

    def _encode_pieces(self, pieces: list[str]) -> list[int]:
        return self._bpe.encode(pieces, is_pretokenized=True, add_special_tokens=False).ids

    def encode_padded(self, text: str) -> list[int]:
        """Exactly 77 ids: bos, the first 75 tokens, eos, then ``pad_id`` up to 77."""
        return self.pad_ids(self.encode(text))

    def pad_ids(self, ids: Iterable[int]) -> list[int]:
        """Wrap token ids (without bos/eos) to the 77-id window: bos + first 75 + eos + padding."""
        body = list(ids)[: self.max_length - 2]
        out = [self.bos_id, *body, self.eos_id]
        out.extend([self.pad_id] * (self.max_length - len(out)))
        return out

    def __call__(self, text: str) -> list[int]:
        return self.encode_padded(text)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text for token ids, as OpenAI decodes it (word ends become spaces); for diagnostics.

        With ``skip_special_tokens`` bos/eos are dropped, and so is padding after the last eos.
        """
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            if self.eos_id in ids:
                last_eos = len(ids) - 1 - ids[::-1].index(self.eos_id)
                if all(i == self.pad_id for i in ids[last_eos + 1 :]):
                    ids = ids[:last_eos]
            ids = [i for i in ids if i not in (self.bos_id, self.eos_id)]
        parts: list[str] = []
        buffer: list[int] = []
        for i in ids:
            token = self.id_to_token(i)
            if token in (BOS_TOKEN, EOS_TOKEN):
                parts.append(bytes(buffer).decode("utf-8", errors="replace"))
                buffer = []
                parts.append(token)
                continue
            if token.endswith(WORD_END):
                buffer.extend(self._byte_decoder[c] for c in token[: -len(WORD_END)])
                buffer.append(0x20)
            else:
                buffer.extend(self._byte_decoder[c] for c in token)
        parts.append(bytes(buffer).decode("utf-8", errors="replace"))
        return "".join(parts).strip()

    # ------------------------------------------------------------------ vocabulary
    def token_to_id(self, token: str) -> int | None:
        """Id of a vocabulary entry (BPE alphabet; a word-final token ends in ``</w>``, e.g. ``",</w>"``)."""
        return self._vocab.get(token)

    def id_to_token(self, token_id: int) -> str:
        """Vocabulary entry for an id (raises IndexError for ids outside 0..49407)."""
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise IndexError(f"token id {token_id} outside 0..{self.vocab_size - 1}")
        return self._id_to_token[token_id]

    @property
    def comma_id(self) -> int:
        """Id of a stand-alone comma (``,</w>``), as used by prompt chunking."""
        return self._vocab[",</w>"]

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    # ------------------------------------------------------------------ transformers
    @property
    def hf(self):
        """The equivalent ``transformers.CLIPTokenizer`` (built on first use, same vocab and merges).

        It pads with ``<|endoftext|>`` or, when ``pad_with_eos`` is False, ``!`` (id 0), and has
        ``model_max_length`` 77. It does not apply OpenAI's ftfy/HTML clean-up: pass ``clean(text)``.
        """
        if self._hf is None:
            from transformers import CLIPTokenizer

            self._hf = CLIPTokenizer(
                vocab=dict(self._vocab),
                merges=list(self._merges),
                unk_token=EOS_TOKEN,
                bos_token=BOS_TOKEN,
                eos_token=EOS_TOKEN,
                pad_token=self.pad_token,
                model_max_length=self.max_length,
            )
        return self._hf

    def __repr__(self) -> str:
        return f"ClipTokenizer(pad_id={self.pad_id}, vocab_size={self.vocab_size}, max_length={self.max_length})"


def load_clip_tokenizer(pad_with_eos: bool = True) -> ClipTokenizer:
    """Shared tokenizer instance: ``pad_with_eos=True`` for SD 1.x / CLIP-L, ``False`` (pad id 0) for OpenCLIP."""
    return _cached_tokenizer(bool(pad_with_eos))


@functools.lru_cache(maxsize=2)
def _cached_tokenizer(pad_with_eos: bool) -> ClipTokenizer:
    return ClipTokenizer(pad_with_eos=pad_with_eos)
