"""One corpus loader for the experiments: real English text as bytes, split by file, no downloads.

The default corpus is Vim's help files (about 9.5 MB of English prose with some code), which the
Debian/Ubuntu package ``vim-runtime`` installs under ``/usr/share/vim/vim*/doc``:

    apt-get install vim-runtime          (or: any folder of text files, --data /path/to/folder)

Files are split into train and validation by file name (a stable hash), never inside a file, so
validation text is unseen. Tokens are bytes (vocabulary 256): no tokenizer to download.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from typing import Optional

import torch

VIM_DOC_GLOB = "/usr/share/vim/vim*/doc"
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".tex", "")
VOCAB = 256


class CorpusMissing(FileNotFoundError):
    pass


def default_corpus_dir() -> Optional[str]:
    """The installed Vim help folder, or None."""
    found = sorted(d for d in glob.glob(VIM_DOC_GLOB) if os.path.isdir(d))
    return found[-1] if found else None


def _is_validation(name: str, fraction: float) -> bool:
    h = int(hashlib.sha256(os.path.basename(name).encode()).hexdigest()[:8], 16)
    return (h % 10_000) < fraction * 10_000


@dataclass
class Corpus:
    train: torch.Tensor  # uint8 bytes, files concatenated
    valid: torch.Tensor
    source: str
    files_train: int
    files_valid: int

    def describe(self) -> str:
        return (
            f"{self.source}: {self.files_train} train files ({self.train.numel() / 1e6:.2f} MB), "
            f"{self.files_valid} validation files ({self.valid.numel() / 1e6:.2f} MB), byte tokens"
        )


def load_corpus(path: Optional[str] = None, valid_fraction: float = 0.1, max_bytes: Optional[int] = None) -> Corpus:
    """Read every text file under ``path`` (default: the Vim help folder) and split it by file.

    ``max_bytes`` caps each split (smoke runs). Raises :class:`CorpusMissing` with the install
    command when there is no corpus.
    """
    root = path or default_corpus_dir()
    if root is None or not os.path.isdir(root):
        raise CorpusMissing(
            f"no text corpus at {path or VIM_DOC_GLOB}: install Vim's help files with `apt-get install vim-runtime` "
            "(Debian/Ubuntu), or pass --data with a folder of text files"
        )
    files = sorted(
        f
        for f in glob.glob(os.path.join(root, "**", "*"), recursive=True)
        if os.path.isfile(f) and os.path.splitext(f)[1] in TEXT_SUFFIXES and os.path.basename(f) != "tags"
    )
    if len(files) < 2:
        raise CorpusMissing(f"{root} holds {len(files)} text file(s); at least 2 are needed (train and validation)")
    parts: dict[bool, list[bytes]] = {False: [], True: []}
    for f in files:
        with open(f, "rb") as fh:
            parts[_is_validation(f, valid_fraction)].append(fh.read())
    if not parts[True]:  # tiny folders: keep one file for validation
        parts[True].append(parts[False].pop())

    def tensor(chunks: list[bytes]) -> torch.Tensor:
        data = b"\n".join(chunks)
        if max_bytes is not None:
            data = data[:max_bytes]
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()

    return Corpus(tensor(parts[False]), tensor(parts[True]), root, len(parts[False]), len(parts[True]))


def batches(data: torch.Tensor, batch: int, length: int, generator: torch.Generator):
    """Endless random windows: (x [batch, length], y [batch, length]) int64, y the next bytes."""
    n = data.numel() - length - 1
    if n <= 0:
        raise ValueError(f"corpus split of {data.numel()} bytes is shorter than one window of {length + 1}")
    while True:
        starts = torch.randint(0, n, (batch,), generator=generator)
        idx = starts[:, None] + torch.arange(length + 1)
        w = data[idx].long()
        yield w[:, :-1], w[:, 1:]


def eval_windows(data: torch.Tensor, length: int, count: int, seed: int = 1234) -> torch.Tensor:
    """``count`` fixed windows of ``length + 1`` bytes (the same for every method), int64 [count, length + 1]."""
    g = torch.Generator().manual_seed(seed)
    n = data.numel() - length - 1
    if n <= 0:
        raise ValueError(f"validation split of {data.numel()} bytes is shorter than one window of {length + 1}")
    starts = torch.randint(0, n, (count,), generator=g)
    return data[starts[:, None] + torch.arange(length + 1)].long()


def machine() -> str:
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
