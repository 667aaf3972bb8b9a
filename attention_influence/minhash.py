"""MinHash band keys for near-duplicate detection as FineWeb computed them, on plain strings (no Spark).

FineWeb (Penedo et al. 2024) removed near-duplicates with datatrove's `MinhashDedupSignature` /
`MinhashDedupBuckets` / `MinhashDedupCluster` (datatrove `examples/fineweb.py`): word 5-grams of a
normalised text, 112 MinHash values in 14 bands of 8, 64-bit hashes. Two documents are candidates
when all 8 values of one band are equal; the probability of that for Jaccard similarity s of their
5-gram sets is 1 - (1 - s^8)^14 (0.5 near s = 0.72, 0.92 at 0.8, 0.9996 at 0.9).

What this module reproduces of datatrove 0.10.1 (`pipeline/dedup/minhash.py`, `utils/text.py`):
- normalisation: `simplify_text` with its defaults (lower case; runs of digits, with one decimal
  separator, become "0"; its punctuation set becomes spaces; whitespace collapsed; combining marks
  dropped after NFD), character for character;
- shingles: each n-gram of words joined by one space, hashed with the first 8 bytes of SHA-1 (little
  endian), `HashConfig(hash_fc="sha1", precision=64)`: FineWeb ran with 64-bit SHA-1 shingles (the
  datatrove of its time had no other; today's default, xxhash, needs another dependency);
- signature: value i is min over shingles of (shingle * a_i + b_i) mod (2^61 - 1) in uint64
  arithmetic (the product wraps at 2^64 as numpy computes it), a and b drawn by
  `numpy.random.RandomState(seed)` in datatrove's order, so signatures equal datatrove's.

Two differences. Words: datatrove splits the normalised text with spaCy's English tokenizer (a heavy
dependency); here it is split on spaces. The normalised text has no punctuation left, so the two
agree except on spaCy's special cases ("cannot" is "can" + "not" for spaCy) and symbols it splits
off (currency signs, emoji). Band keys: datatrove compares a band's 8 values as a tuple; here a band
is one signed 64-bit key (BLAKE2b of the band's number and values), so that Spark shuffles one BIGINT
per band. Two different bands collide with probability 2^-64 per pair: about 0.2 false candidate
pairs in 2.7 billion band rows (190M documents), against MinHash's own false positives near s = 0.7.
"""

from __future__ import annotations

import hashlib
import re
import struct
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

MERSENNE_PRIME = (1 << 61) - 1


@dataclass(frozen=True)
class MinHashConfig:
    """Shingle size, bands and hashes per band; FineWeb's are the defaults. `seed` draws the hashes."""

    n_grams: int = 5
    bands: int = 14
    hashes_per_band: int = 8
    seed: int = 1

    @property
    def hashes(self) -> int:
        return self.bands * self.hashes_per_band

    def candidate_probability(self, similarity: float) -> float:
        """Probability that two documents of this Jaccard similarity share at least one band."""
        return 1.0 - (1.0 - similarity ** self.hashes_per_band) ** self.bands

    def threshold(self) -> float:
        """The similarity where the candidate probability climbs steepest: (1/bands)^(1/hashes_per_band)."""
        return (1.0 / self.bands) ** (1.0 / self.hashes_per_band)


FINEWEB = MinHashConfig()

# datatrove.utils.text.PUNCTUATION: these characters and the C0/C1 control characters but tab and newline.
_PUNCTUATION = ("!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»"
                + "".join(chr(c) for low, high in ((0, 9), (11, 13), (13, 32), (127, 160)) for c in range(low, high)))
_PUNCTUATION_TO_SPACE = str.maketrans(_PUNCTUATION, " " * len(_PUNCTUATION))
# datatrove matches \p{Nd}+ with the `regex` package; Python's \d is the same class (Unicode Nd).
_NUMBERS = re.compile(r"\d+([.,،٫⎖⎗⎘]\d+)?")
_WHITESPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """datatrove's `simplify_text` with its default TextNormConfig (see the module docstring)."""
    text = _NUMBERS.sub("0", text.lower()).translate(_PUNCTUATION_TO_SPACE)
    text = _WHITESPACE.sub(" ", text.strip())
    if not text.isascii():  # NFD changes no ASCII character and ASCII has no combining marks
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    return text.strip()


def words(text: str) -> list[str]:
    """The normalised text's words (split on spaces where datatrove uses spaCy: module docstring)."""
    return normalise(text).split()


def shingle_hash(shingle: str) -> int:
    """datatrove's `sha1_hash64`: the first 8 bytes of SHA-1 of the UTF-8 text, little endian."""
    return struct.unpack("<Q", hashlib.sha1(shingle.encode("utf-8")).digest()[:8])[0]


def shingles(text: str, n: int = FINEWEB.n_grams) -> np.ndarray:
    """Hashes of the text's word n-grams (uint64, in order, repeats kept); empty under n words."""
    tokens = words(text)
    return np.fromiter((shingle_hash(" ".join(tokens[i:i + n])) for i in range(len(tokens) - n + 1)),
                       dtype=np.uint64)


@lru_cache(maxsize=8)
def permutations(config: MinHashConfig = FINEWEB) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of each of the config's hash functions, drawn as datatrove draws them."""
    generator = np.random.RandomState(config.seed)
    a = generator.randint(1, MERSENNE_PRIME, dtype=np.uint64, size=(1, config.hashes))
    b = generator.randint(0, MERSENNE_PRIME, dtype=np.uint64, size=(1, config.hashes))
    return a, b


def signature(text: str, config: MinHashConfig = FINEWEB) -> np.ndarray | None:
    """The text's `config.hashes` MinHash values (uint64), None when it has fewer than n words."""
    hashed = shingles(text, config.n_grams)
    if hashed.size == 0:
        return None
    a, b = permutations(config)
    with np.errstate(over="ignore"):  # uint64 wraps, as in datatrove
        return np.min((hashed.reshape(-1, 1) * a + b) % np.uint64(MERSENNE_PRIME), axis=0)


def band_keys_of(values: np.ndarray, config: MinHashConfig = FINEWEB) -> list[int]:
    """One signed 64-bit key per band of a signature: equal keys <=> equal bands (up to 2^-64)."""
    per_band = values.astype("<u8").reshape(config.bands, config.hashes_per_band)
    return [int.from_bytes(hashlib.blake2b(band.to_bytes(2, "little") + per_band[band].tobytes(),
                                           digest_size=8).digest(), "little", signed=True)
            for band in range(config.bands)]


def band_keys(text: str | None, config: MinHashConfig = FINEWEB) -> list[int] | None:
    """The text's band keys; None for a missing text or one under n words (never a near-duplicate)."""
    values = None if text is None else signature(text, config)
    return None if values is None else band_keys_of(values, config)
