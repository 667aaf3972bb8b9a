"""The sample corpus: real local text in three domains, documents within the requested length."""

from __future__ import annotations

from demo.corpus import _chunks, sample_corpus


def test_chunks_never_exceed_max_chars_and_lose_no_text():
    texts = ["a" * 5000, "x\n" * 3000, ("word " * 50 + "\n") * 40 + "\n\n" + "b" * 10 + "\n\n" + "short"]
    for text in texts:
        chunks = list(_chunks(text, 700))
        assert all(len(c) <= 700 for c in chunks), [len(c) for c in chunks]
        # Only the separators (newlines) at the cuts may go; every other character stays, in order.
        assert "".join(chunks).replace("\n", "") == text.replace("\n", "")


def test_sample_corpus_sizes_documents_as_asked():
    docs = sample_corpus(per_domain=30, max_chars=1200, min_chars=500)
    by_domain: dict[str, int] = {}
    for doc in docs:
        by_domain[doc.domain] = by_domain.get(doc.domain, 0) + 1
        assert 500 <= len(doc.text) <= 1200, (doc.id, len(doc.text))
    assert by_domain == {"code": 30, "legal": 30, "prose": 30}
    assert len({d.id for d in docs}) == len(docs)
