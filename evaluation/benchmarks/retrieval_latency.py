"""Hint retrieval latency at 1k, 10k and 100k hints (the HintStore query path, on disk Chroma).

What is timed is `HintStore.retrieve`: top-k active hints of one category by cosine, metadata
(the Hint JSON) returned and parsed back into `Hint` records — once with the query embedding
excluded (`HintStore.nearest`, vector given) and once included (`retrieve(category, query, k)`:
MiniLM embeds the query text first). Median and p95 over `--queries` queries. The store keeps
one collection per (category, status), so the query carries no metadata filter; with the old
one-collection layout and a `where` filter the 100k/1k median ratio was 116x. Target: <= 3x.

Also timed: inserting the hints (`HintStore.bulk_load`: screen, Chroma upserts, audit log; the
old raw-collection insert of 100k took 149 s) and dedup per new hint (`HintStore.upsert` of
`--dedup` new hints with precomputed vectors: an exact-id lookup and a nearest-neighbour query
per status, so it must not grow linearly with the store).

Measured on this 2-core machine under load (one run, 200 queries, k=3): median 1.64 / 1.28 /
1.36 ms at 1k / 10k / 100k (100k/1k: 0.83x; 116x before); with the query embedding 20.9 / 14.7
/ 13.9 ms; insert of 100k 98 s (149 s before); dedup 98 / 330 / 116 ms per new hint (the 10k
figure overlapped a test run on the same cores).

Realistic but synthetic hints: texts come from `WHEN <condition>: <instruction>` templates over
10 categories (~10% disabled). Embedding 100k texts with MiniLM takes ~30 min on this 2-core
machine, so `--base` distinct texts are embedded for real and every hint beyond them reuses a
base embedding plus Gaussian noise (sigma `--noise` per dimension, then re-normalised; at 0.01
the cosine to its base vector is ~0.98), with its own text, id and metadata. The HNSW index
then holds near-duplicate clusters, which is what a large deduplicated-by-threshold store looks
like; neighbour search cost depends on the index size, not on how the vectors were made.
Each size gets its own store (collection prefix) in one temporary data dir (deleted at the end).

Command (repo root, venv active; ~5-10 min on a loaded 2-core CPU, mostly inserting 100k):

    python -m evaluation.benchmarks.retrieval_latency --sizes 1000 10000 100000 --queries 200
"""

from __future__ import annotations

import random
import shutil
import statistics
import tempfile
import time

from evaluation.benchmarks import common
from r2w.config import HintsConfig
from r2w.contracts import Hint, Provenance
from r2w.hintstore import HintStore, embed, rule_key

CATEGORIES = [
    "twc",
    "cookingworld",
    "coin",
    "mapreader",
    "arithmetic",
    "sorting",
    "simonsays",
    "peckingorder",
    "basic_arithmetic",
    "leg_counting",
]
CONDITIONS = [
    "a {container} is closed",
    "you hold the {object}",
    "the {object} lies on the floor",
    "you enter a new room",
    "an action had no effect",
    "the {door} is locked",
    "you see a {coin}",
    "the recipe lists a {ingredient}",
    "the task asks for the {quantity}",
    "you are stuck in the {room}",
    "the map shows the {room}",
    "the list is not sorted",
    "the game tells you to {verb}",
    "two numbers are given",
    "you have read the {book}",
]
INSTRUCTIONS = [
    "open the {container} before putting anything in it",
    "put the {object} in the {container} where it belongs",
    "take the {object} first",
    "look around before moving",
    "do not repeat the same action",
    "unlock the {door} with the {key}",
    "take the {coin}",
    "slice the {ingredient} before cooking it",
    "compute the {quantity} step by step",
    "move to an unexplored {room}",
    "follow the shortest path to the {room}",
    "sort the items from smallest to largest",
    "{verb} exactly as instructed",
    "add the numbers before answering",
    "check the inventory before cooking",
]
FILLERS = {
    "container": ["fridge", "wardrobe", "drawer", "cupboard", "box", "chest"],
    "object": ["apple", "shirt", "key", "book", "plate", "sock"],
    "door": ["front door", "sliding door", "gate"],
    "coin": ["coin", "gold coin"],
    "ingredient": ["carrot", "onion", "potato", "pepper"],
    "quantity": ["total", "difference", "product"],
    "room": ["kitchen", "bathroom", "garden", "corridor"],
    "verb": ["go north", "take the book", "wave"],
    "book": ["cookbook", "map"],
    "key": ["key", "brass key"],
}
QUERIES = [
    "You are in the {room}. The {container} is closed. You carry the {object}.",
    "Your task is to pick up the {coin}. You see a {door} to the north.",
    "Recipe: {ingredient}, sliced and fried. You are in the {room}.",
    "What is the {quantity} of 17 and 25?",
    "Tidy up the house: the {object} is on the floor of the {room}.",
]


def fill(template: str, rng: random.Random, concrete: bool) -> str:
    """Either keep a placeholder ({object}) or put a concrete word in, like extracted hints do."""
    if not concrete:
        return template
    out = template
    for key, words in FILLERS.items():
        token = "{" + key + "}"
        while token in out:
            out = out.replace(token, rng.choice(words) if concrete else token, 1)
    return out


def make_hints(n: int, base: int, noise: float, seed: int = 0):
    """n Hint records and their unit vectors: `base` embedded for real, the rest base + noise."""
    import numpy as np

    rng = random.Random(seed)
    hints = []
    for i in range(n):
        cond = fill(rng.choice(CONDITIONS), rng, concrete=rng.random() < 0.5)
        text = fill(rng.choice(INSTRUCTIONS), rng, concrete=rng.random() < 0.5) + f" (variant {i})"
        category = CATEGORIES[i % len(CATEGORIES)]
        hints.append(
            Hint(
                hint_id=Hint.make_id(text, category),
                text=text,
                applicability=f"WHEN {cond}",
                category=category,
                status="disabled" if rng.random() < 0.1 else "active",
                support=rng.randint(1, 5),
                provenance=Provenance(episode_ids=[f"e-{i:08x}"], run_ids=["bench"]),
            )
        )
    n_base = min(base, n)
    base_vecs = embed([rule_key(h) for h in hints[:n_base]])
    gen = np.random.default_rng(seed)
    derived = base_vecs[np.arange(n - n_base) % n_base] + gen.normal(0, noise, (n - n_base, base_vecs.shape[1]))
    derived /= np.linalg.norm(derived, axis=1, keepdims=True)
    return hints, np.concatenate([base_vecs, derived.astype(np.float32)])


def build(store: HintStore, hints, vectors) -> float:
    """Insert through the store (explicit embeddings, no dedup); return seconds."""
    t0 = time.perf_counter()
    store.bulk_load(hints, vectors, by="benchmark", reason="retrieval latency")
    return time.perf_counter() - t0


def time_queries(store: HintStore, queries: list[tuple[str, str]], k: int, include_embedding: bool) -> list[float]:
    """Milliseconds per retrieve (include_embedding) or nearest (vector given) call."""
    pre = None if include_embedding else embed([q for _, q in queries])
    out = []
    for i, (category, text) in enumerate(queries):
        t0 = time.perf_counter()
        hints = store.retrieve(category, text, k) if include_embedding else store.nearest(category, pre[i], k)
        out.append((time.perf_counter() - t0) * 1000)
        assert len(hints) == k and all(h.category == category and h.status == "active" for h in hints)
    return out


def time_dedup(store: HintStore, fresh, vectors) -> float:
    """Milliseconds per new hint for an upsert (dedup against the store) with precomputed vectors."""
    t0 = time.perf_counter()
    store.upsert(fresh, run_id="bench-dedup", vectors=vectors)
    return (time.perf_counter() - t0) * 1000 / max(1, len(fresh))


def p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, round(0.95 * len(xs)) - 1)]


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--base", type=int, default=2000, help="hints embedded for real with MiniLM")
    ap.add_argument("--noise", type=float, default=0.01, help="per-dimension sigma for derived embeddings")
    args = ap.parse_args(argv)

    ap.add_argument("--dedup", type=int, default=20, help="new hints upserted (deduplicated) per size")
    args = ap.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="r2w-retrieval-bench-")
    common.setup(tmp, threads=1)

    t0 = time.perf_counter()
    total = max(args.sizes) + args.dedup
    hints, vectors = make_hints(total, args.base, args.noise)
    fresh, fresh_vecs = hints[-args.dedup :], vectors[-args.dedup :]
    print(f"made {len(hints)} hints ({min(args.base, len(hints))} embedded) in {time.perf_counter() - t0:.1f} s")
    rng = random.Random(1)
    queries = [(rng.choice(CATEGORIES), fill(rng.choice(QUERIES), rng, concrete=True)) for _ in range(args.queries)]
    rows = []
    try:
        for size in args.sizes:
            store = HintStore(HintsConfig(collection=f"bench-{size}"), tmp)
            insert_s = build(store, hints[:size], vectors[:size])
            print(f"  {size} hints: inserted in {insert_s:.1f} s", flush=True)
            time_queries(store, queries[:10], args.k, include_embedding=False)  # warm the index
            excl = time_queries(store, queries, args.k, include_embedding=False)
            incl = time_queries(store, queries, args.k, include_embedding=True)
            dedup_ms = time_dedup(store, fresh, fresh_vecs)
            row = (size, insert_s, statistics.median(excl), p95(excl), statistics.median(incl), p95(incl), dedup_ms)
            rows.append(row)
            print(f"  {size} hints: median {row[2]:.2f} ms, dedup {dedup_ms:.1f} ms/hint", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nretrieve top-{args.k} (category + active), {args.queries} queries, ms; dedup ms per new hint")
    print(f"{'hints':>8} {'insert s':>9} {'median':>8} {'p95':>8} {'median+emb':>11} {'p95+emb':>8} {'dedup':>7}")
    for size, ins, m, p, mi, pi, d in rows:
        print(f"{size:>8} {ins:>9.1f} {m:>8.2f} {p:>8.2f} {mi:>11.2f} {pi:>8.2f} {d:>7.1f}")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(
            f"ratio {last[0]}/{first[0]}: median {last[2] / first[2]:.2f}x, p95 {last[3] / first[3]:.2f}x "
            f"(query embedding excluded); median {last[4] / first[4]:.2f}x (included); "
            f"dedup per hint {last[6] / first[6]:.2f}x"
        )


if __name__ == "__main__":
    main()
