"""Near-duplicates by MinHash (attention_influence.minhash, spark_jobs.near_duplicates).

References: datatrove's own normalisation and signatures (the module FineWeb ran); the collision
rate 1 - (1 - s^8)^14 at exact Jaccard similarities s; clusters equal to the connected components
of the pairs whose exact 5-gram Jaccard similarity (brute force over all pairs) is high, on a set
built so that no pair across clusters is anywhere near the threshold; and on 200,000 documents, the
spread of every shuffle stage over its tasks (benchmarks/stage_skew.py).
"""

from __future__ import annotations

import random
import re
import string

import numpy as np
import pytest

from attention_influence import minhash

# ---------------------------------------------------------------- the pure core against datatrove


class WhitespaceWords:
    """Our word split handed to datatrove through its WordTokenizer interface (spaCy is not installed)."""

    @staticmethod
    def tokenizer():
        from datatrove.utils.word_tokenizers import WordTokenizer

        class Words(WordTokenizer):
            def word_tokenize(self, text):
                return text.split()

            def sent_tokenize(self, text):
                return [text]

            def span_tokenize(self, text):
                return []

        return Words()


TEXTS = [
    "Hello, World! It's 3.14 - café naïve ÉCOLE 1,000,000 ١٢٣ and\ttabs\n\nnew lines (see [1]).",
    "x\x01y\x85z « quoted » 【bracket】 “curly” ‘single’ — dash – en ... … ＃ full width １２",
    "Die Straße führt über den Fluß; Ça va? Ñandú, São Paulo, Zürich 2024-01-02.",
    "  \n ", "four words only here", "one two three four five", "def f(x):\n    return x ** 2  # square\n",
]


@pytest.fixture(scope="module")
def datatrove_minhash():
    pytest.importorskip("datatrove", reason="datatrove is in the test extra (pip install -e '.[test]')")
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.hashing import HashConfig

    config = MinhashConfig(hash_config=HashConfig(hash_fc="sha1", precision=64), n_grams=5, num_buckets=14,
                           hashes_per_bucket=8)
    return MinhashDedupSignature("/tmp/unused-minhash-output", config=config, language=WhitespaceWords.tokenizer())


def test_normalisation_is_datatrove_simplify_text(datatrove_minhash):
    from datatrove.utils.text import simplify_text

    for text in TEXTS + [random_text(random.Random(1), 40, alphabet=string.printable + "éüßçøÅ—“”«»")]:
        assert minhash.normalise(text) == simplify_text(text), text


def test_signatures_are_datatroves(datatrove_minhash):
    rng = random.Random(2)
    for text in TEXTS + [random_text(rng, n) for n in (5, 6, 50, 400)]:
        shingles = datatrove_minhash.get_shingles(text)
        ours = minhash.signature(text)
        if shingles.size == 0:
            assert ours is None and minhash.band_keys(text) is None, text
            continue
        theirs = np.array(datatrove_minhash.get_signature(shingles), dtype=np.uint64)  # 14 bands x 8
        assert theirs.shape == (14, 8)
        assert (theirs.ravel() == ours).all(), text


def test_fineweb_settings():
    config = minhash.FINEWEB
    assert (config.n_grams, config.bands, config.hashes_per_band, config.hashes) == (5, 14, 8, 112)
    assert config.threshold() == pytest.approx(0.719, abs=1e-3)
    assert config.candidate_probability(0.8) == pytest.approx(0.924, abs=1e-3)


def words_of(rng, count):
    return ["".join(rng.choice(string.ascii_lowercase) for _ in range(7)) for _ in range(count)]


def random_text(rng, count, alphabet=None):
    if alphabet is None:
        return " ".join(words_of(rng, count))
    return "".join(rng.choice(alphabet) for _ in range(count * 6))


def reference_grams(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """Word n-grams of a text of ASCII letters, spaces and ASCII punctuation (where datatrove's
    normalisation is: lower case, punctuation to spaces), computed without attention_influence."""
    tokens = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def replaced(rng, words, count):
    """`words` with `count` positions, at least 6 apart, replaced by fresh words."""
    out = list(words)
    for position in rng.sample(range(0, len(words), 6), count):
        out[position] = words_of(rng, 1)[0]
    return out


@pytest.mark.parametrize("changed", [1, 2, 3])
def test_candidate_rate_follows_the_band_curve(changed):
    """Pairs at measured Jaccard similarity share a band key as often as 1 - (1 - s^8)^14 predicts."""
    rng = random.Random(10 + changed)
    predicted, shared = [], []
    for _ in range(300):
        base = words_of(rng, 60)
        variant = replaced(rng, base, changed)
        s = jaccard(reference_grams(" ".join(base)), reference_grams(" ".join(variant)))
        predicted.append(minhash.FINEWEB.candidate_probability(s))
        shared.append(bool(set(minhash.band_keys(" ".join(base))) & set(minhash.band_keys(" ".join(variant)))))
    p = float(np.mean(predicted))
    sigma = (p * (1 - p) / len(shared)) ** 0.5
    assert 0.15 < p < 0.99  # the steep part of the curve
    print(f"{changed} words changed: predicted {p:.3f}, observed {np.mean(shared):.3f}")
    assert abs(np.mean(shared) - p) <= 4 * sigma + 0.01, (np.mean(shared), p)


def test_texts_under_five_words_have_no_keys():
    assert minhash.band_keys("only four words here") is None
    assert minhash.band_keys(None) is None and minhash.band_keys(" ,,, ") is None
    assert len(minhash.band_keys("exactly five words are here")) == 14


# ---------------------------------------------------------------- clusters against exact Jaccard


CHAIN = 12


def small_corpus(seed: int = 3):
    """(id, text, n) rows and the chain's rows: clusters of near-duplicates (last word replaced, a word
    appended, case and punctuation changed: 5-gram Jaccard >= 0.9 within), a chain of CHAIN documents
    drifting three words a step (Jaccard 0.9 a step, ends 0.26 apart), documents that share a quarter of a cluster's text (Jaccard ~0.23), unrelated documents,
    texts under five words, NULL texts and a NULL id. Ids are shuffled, so the kept one is anywhere."""
    rng = random.Random(seed)
    texts = []
    for size in (2, 2, 3, 3, 4, 5, 6):
        base = words_of(rng, 60)
        variants = [base, base[:-1] + words_of(rng, 1), base + words_of(rng, 1), base[:-1] + words_of(rng, 1),
                    base[:-2] + words_of(rng, 1) + base[-1:]]
        texts += [" ".join(words) for words in variants[:size - 1]]
        texts.append(". ".join(w.capitalize() + ("," if i % 5 == 0 else "") for i, w in enumerate(base)))
        texts.append(" ".join(base[:25] + words_of(rng, 35)))  # a quarter shared: not a near-duplicate
    chain = words_of(rng, 60)
    chain_start = len(texts)
    for _ in range(CHAIN):
        texts.append(" ".join(chain))
        chain = chain[3:] + words_of(rng, 3)
    texts += [random_text(rng, rng.randrange(20, 120)) for _ in range(40)]
    texts += ["too short", "four words only here", "", None, None]
    ids = [f"d{n:04d}" for n in rng.sample(range(10_000), len(texts))]
    rows = [(doc_id, text, n) for n, (doc_id, text) in enumerate(zip(ids, texts))]
    rows.append((None, texts[0], len(rows)))  # a NULL id with a near-duplicate's text
    return rows, rows[chain_start:chain_start + CHAIN]


def expected_near_duplicate_of(rows, linked: float = 0.85, apart: float = 0.3) -> dict:
    """id -> smallest id of its component in the graph of pairs with Jaccard >= `linked`, for ids
    not the smallest; checks the premise that every pair across components is below `apart`."""
    grams = {doc_id: reference_grams(text) for doc_id, text, _ in rows
             if doc_id is not None and text is not None and reference_grams(text)}
    ids = sorted(grams)
    parent = {i: i for i in ids}

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    similarity = {}
    for x in range(len(ids)):
        for y in range(x + 1, len(ids)):
            s = similarity[ids[x], ids[y]] = jaccard(grams[ids[x]], grams[ids[y]])
            if s >= linked:
                a, b = sorted((root(ids[x]), root(ids[y])))
                parent[b] = a
    for (a, b), s in similarity.items():
        assert root(a) == root(b) or s < apart, (a, b, s)
    return {i: root(i) for i in ids if root(i) != i}


def run_near_duplicates(spark, rows, partitions: int, id_type: str = "STRING"):
    from spark_jobs.session import session_settings
    from spark_jobs.near_duplicates import near_duplicate_of

    frame = spark.createDataFrame(rows, f"id {id_type}, text STRING, n INT").repartition(partitions)
    with session_settings(spark, {"spark.sql.shuffle.partitions": str(partitions)}):
        return sorted((tuple(r) for r in near_duplicate_of(frame, "id", "text").collect()), key=lambda r: r[2])


def test_clusters_are_the_exact_jaccard_components(spark):
    rows, chain = small_corpus()
    expected = expected_near_duplicate_of(rows)
    assert len(expected) >= 25 and len(set(expected.values())) >= 8  # the corpus has clusters to find
    got = run_near_duplicates(spark, rows, 3)
    assert [r[:3] for r in got] == rows  # every input row once, its columns unchanged
    assert {r[0]: r[3] for r in got if r[3] is not None} == expected
    assert jaccard(reference_grams(chain[0][1]), reference_grams(chain[-1][1])) < 0.3  # one cluster all the same
    assert len({expected.get(r[0], r[0]) for r in chain}) == 1
    assert all(r[3] is None for r in got if r[0] is None or r[1] is None or len((r[1] or "").split()) < 5)


def test_reruns_give_the_same_clusters_on_other_partitions_and_id_types(spark):
    rows, _ = small_corpus(seed=4)
    first = run_near_duplicates(spark, rows, 2)
    assert {r[0]: r[3] for r in first if r[3] is not None} == expected_near_duplicate_of(rows)
    # The same documents with BIGINT ids (same order: "d0042" -> 42), in reverse, on 7 partitions.
    number = {r[0]: None if r[0] is None else int(r[0][1:]) for r in rows}
    again = run_near_duplicates(spark, [(number[i], t, n) for i, t, n in reversed(rows)], 7, id_type="BIGINT")
    assert again == [(number[i], t, n, number[kept] if kept else None) for i, t, n, kept in first]


def test_components_of_a_path_and_the_round_limit(spark):
    """The smallest id travels the whole length of a path (ids in no order along it); too few rounds raise."""
    from spark_jobs.near_duplicates import smallest_connected_ids

    path = [7, 3, 9, 12, 1, 8, 5, 11]
    edges = spark.createDataFrame([(a, b) for a, b in zip(path, path[1:])] + [(20, 21), (22, 21)],
                                  "nd_src BIGINT, nd_dst BIGINT")
    labels = {r["nd_id"]: r["nd_label"] for r in smallest_connected_ids(edges).collect()}
    assert labels == {**{node: 1 for node in path}, 20: 20, 21: 20, 22: 20}
    with pytest.raises(RuntimeError, match="did not settle in 2 rounds"):
        smallest_connected_ids(edges, max_rounds=2)


def test_a_column_of_that_name_is_refused(spark):
    from spark_jobs.near_duplicates import near_duplicate_of

    frame = spark.createDataFrame([("a", "x", "y")], "id STRING, text STRING, near_duplicate_of STRING")
    with pytest.raises(ValueError, match="near_duplicate_of"):
        near_duplicate_of(frame, "id", "text")


# ---------------------------------------------------------------- at scale: no task holds a cluster

SCALE_DOCUMENTS = 200_000
TASKS = 8


def scale_corpus(spark):
    """200,000 documents of 30 five-letter words: 20% one template with its last word varied (one
    cluster of 40,000, whose band keys are shared by tens of thousands of documents), 20% clusters of
    four (a base of 29 words and a varied last word), 60% unrelated. Letters come from MD5 digests."""
    from pyspark.sql import functions as F

    def letters(seed, count):
        """`count` pseudo-random letters a-p (hex digits mapped to letters) drawn from `seed`."""
        digests = F.concat(*[F.md5(F.concat(seed, F.lit(f"/{k}"))) for k in range(-(-count // 32))])
        return F.substring(F.translate(digests, "0123456789", "ghijklmnop"), 1, count)

    def text(head, last):  # 29 words from `head`, the last from `last`
        return F.trim(F.regexp_replace(F.concat(letters(head, 145), letters(last, 5)), "(.{5})", "$1 "))

    i = F.col("id")
    kind = F.when(i % 10 < 2, "template").when(i % 10 < 4, "four").otherwise("unrelated")
    cluster = F.when(kind == "template", F.lit(0)).when(kind == "four", F.floor(i / 20)).otherwise(i)
    head = F.concat(kind, F.lit(":"), cluster.cast("string"))
    return (spark.range(SCALE_DOCUMENTS, numPartitions=4)
            .select(F.format_string("doc-%07d", i).alias("doc_id"), kind.alias("kind"), cluster.alias("cluster"),
                    text(head, F.concat(F.lit("last:"), i.cast("string"))).alias("text")))


@pytest.mark.slow
def test_no_stage_holds_a_cluster_on_200k_documents(spark):
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from benchmarks.stage_skew import measured
    from spark_jobs.session import session_settings
    from spark_jobs.near_duplicates import near_duplicate_of

    documents = scale_corpus(spark)
    settings = {"spark.sql.shuffle.partitions": str(TASKS), "spark.sql.adaptive.coalescePartitions.enabled": "false"}
    with session_settings(spark, settings), measured(spark) as measurement:
        result = near_duplicate_of(documents, "doc_id", "text").localCheckpoint(eager=True)
    stages = measurement.shuffled(at_least=SCALE_DOCUMENTS // 10)
    for stage in measurement.stages:
        print(stage.line())
    assert len(stages) >= 3, [s.line() for s in measurement.stages]
    for stage in stages:
        assert stage.largest_share <= 2 / stage.tasks, stage.line()

    # Every row once; each cluster keeps its smallest id (clusters: Jaccard 25/27 = 0.93 within).
    assert result.count() == SCALE_DOCUMENTS and result.select("doc_id").distinct().count() == SCALE_DOCUMENTS
    smallest = F.min("doc_id").over(Window.partitionBy("kind", "cluster"))
    expected = F.when(F.col("doc_id") != smallest, smallest)
    summary = (result.withColumn("expected", expected)
               .groupBy("kind").agg(F.count(F.lit(1)).alias("documents"),
                                    F.sum(F.col("near_duplicate_of").isNotNull().cast("int")).alias("removed"),
                                    F.sum((~F.col("near_duplicate_of").eqNullSafe(F.col("expected"))).cast("int"))
                                    .alias("wrong")).collect())
    got = {r["kind"]: (r["documents"], r["removed"], r["wrong"]) for r in summary}
    assert got == {"template": (40_000, 39_999, 0), "four": (40_000, 30_000, 0), "unrelated": (120_000, 0, 0)}
