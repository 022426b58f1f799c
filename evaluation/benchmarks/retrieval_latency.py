"""Hint retrieval latency at 1k, 10k and 100k hints (the HintStore query path, on disk Chroma).

What is timed is `HintStore.retrieve`: a Chroma query filtered by category and status=active,
top-k by cosine, metadata (the Hint JSON) returned and parsed back into `Hint` records — once
with the query embedding excluded (vector given) and once included (MiniLM embeds the query
text first, as `retrieve(category, query, k)` does). Median and p95 over `--queries` queries.

Realistic but synthetic hints: texts come from `WHEN <condition>: <instruction>` templates over
10 categories (~10% disabled). Embedding 100k texts with MiniLM takes ~30 min on this 2-core
machine, so `--base` distinct texts are embedded for real and every hint beyond them reuses a
base embedding plus Gaussian noise (sigma `--noise` per dimension, then re-normalised; at 0.01
the cosine to its base vector is ~0.98), with its own text, id and metadata. The HNSW index
then holds near-duplicate clusters, which is what a large deduplicated-by-threshold store looks
like; neighbour search cost depends on the index size, not on how the vectors were made.
Each size gets its own collection in a temporary `PersistentClient` folder (deleted at the end).

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
from r2w.contracts import Hint, Provenance
from r2w.hintstore import _hint, _metadata, _where, embed, embedding_function, rule_key

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


def build(client, name: str, hints, vectors, batch: int = 5000) -> float:
    """Insert through the collection (explicit embeddings, HintStore's metadata); return seconds."""
    col = client.create_collection(
        name, embedding_function=embedding_function(), configuration={"hnsw": {"space": "cosine"}}
    )
    t0 = time.perf_counter()
    for s in range(0, len(hints), batch):
        chunk = hints[s : s + batch]
        col.add(
            ids=[h.hint_id for h in chunk],
            documents=[rule_key(h) for h in chunk],
            embeddings=vectors[s : s + batch].tolist(),
            metadatas=[_metadata(h) for h in chunk],
        )
    return time.perf_counter() - t0


def time_queries(col, queries: list[tuple[str, str]], k: int, include_embedding: bool) -> list[float]:
    """Milliseconds per retrieve-equivalent query."""
    pre = None if include_embedding else embed([q for _, q in queries])
    out = []
    for i, (category, text) in enumerate(queries):
        t0 = time.perf_counter()
        vec = embed([text])[0] if include_embedding else pre[i]
        found = col.query(
            query_embeddings=[vec.tolist()], n_results=k, where=_where(category, "active"), include=["metadatas"]
        )
        hints = [_hint(m) for m in found["metadatas"][0]]
        out.append((time.perf_counter() - t0) * 1000)
        assert len(hints) == k and all(h.category == category and h.status == "active" for h in hints)
    return out


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

    tmp = tempfile.mkdtemp(prefix="r2w-retrieval-bench-")
    common.setup(tmp, threads=1)
    import chromadb
    from chromadb.config import Settings

    t0 = time.perf_counter()
    hints, vectors = make_hints(max(args.sizes), args.base, args.noise)
    print(f"made {len(hints)} hints ({min(args.base, len(hints))} embedded) in {time.perf_counter() - t0:.1f} s")
    rng = random.Random(1)
    queries = [(rng.choice(CATEGORIES), fill(rng.choice(QUERIES), rng, concrete=True)) for _ in range(args.queries)]
    client = chromadb.PersistentClient(path=tmp + "/chroma", settings=Settings(anonymized_telemetry=False))
    rows = []
    try:
        for size in args.sizes:
            col_name = f"bench-{size}"
            insert_s = build(client, col_name, hints[:size], vectors[:size])
            col = client.get_collection(col_name)
            time_queries(col, queries[:10], args.k, include_embedding=False)  # warm the index
            excl = time_queries(col, queries, args.k, include_embedding=False)
            incl = time_queries(col, queries, args.k, include_embedding=True)
            rows.append((size, insert_s, statistics.median(excl), p95(excl), statistics.median(incl), p95(incl)))
            print(f"  {size} hints: inserted in {insert_s:.1f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nretrieve top-{args.k} (category + active filter), {args.queries} queries, ms")
    print(f"{'hints':>8} {'insert s':>9} {'median':>8} {'p95':>8} {'median+emb':>11} {'p95+emb':>8}")
    for size, ins, m, p, mi, pi in rows:
        print(f"{size:>8} {ins:>9.1f} {m:>8.2f} {p:>8.2f} {mi:>11.2f} {pi:>8.2f}")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(
            f"ratio {last[0]}/{first[0]}: median {last[2] / first[2]:.2f}x, p95 {last[3] / first[3]:.2f}x "
            f"(query embedding excluded); median {last[4] / first[4]:.2f}x (included)"
        )


if __name__ == "__main__":
    main()
