"""The README's demo paragraph, regenerated from the last demo run's MLflow record, never hand-typed.

Reads the newest evaluated run of the config's experiment (evaluation/benchmarks/experiment_log.py)
and prints what the demo showed: wall time, the CPU it ran on (model and native-bf16 flags, since
speed depends on them), failures, teacher samples verified, each policy's held-out success with n and
95% interval, tokens per episode, the gate's verdict and the registered version.

    python -m evaluation.benchmarks.demo_figures --config demo
"""

from __future__ import annotations

from evaluation.benchmarks import common
from evaluation.benchmarks.experiment_log import experiment_rows
from r2w.config import load_config, parse_sets
from r2w.precision import NATIVE_BF16_FLAGS, cpu_flags
from r2w.tracking import client_for

POLICIES = ("student", "random", "base", "base-sampled", "base_hints")


def paragraph(config: str, overrides: dict | None = None) -> str:
    cfg = load_config(config, overrides)
    rows = experiment_rows(config, overrides)
    if not rows:
        raise SystemExit(f"no evaluated run of {config} in {cfg.tracking_uri}")
    last = rows[-1]
    run = client_for(cfg).get_run(last["run"])
    m = run.data.metrics
    minutes = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 60000
    native = sorted(NATIVE_BF16_FLAGS & cpu_flags()) or ["no native bf16 (AVX2 path)"]
    scores = "; ".join(
        f"{p.replace('_', '+')} {common.success(last['scores'][p])}" for p in POLICIES if last["scores"].get(p)
    )
    student, teacher = last["scores"]["student"], last["scores"].get("base_hints")
    tokens = f"{student['mean_tokens']:.0f} tokens/episode for the student" + (
        f" vs {teacher['mean_tokens']:.0f} for base+hints" if teacher and teacher.get("mean_tokens") else ""
    )
    version = last["registered_version"]
    registered = f", `{cfg.registry.model_name}` v{version} registered as `challenger`." if version else "."
    return (
        f"Run `{last['run'][:8]}` ({minutes:.1f} min of pipeline, install excluded, on {common.cpu_name()}, "
        f"{', '.join(native)}, dtype {run.data.params.get('models.dtype', '?')}): "
        f"{m.get('collect.failures', 0):.0f}/{m.get('collect.episodes', 0):.0f} failures collected, "
        f"{m.get('teach.kept', 0):.0f} of {m.get('teach.attempts', 0):.0f} teacher samples verified. Held-out, "
        f"paired seeds: {scores}. {tokens}. Gate {last['gate']}{registered}"
    )


def main(argv: list[str] | None = None) -> str:
    args = common.parser(__doc__, config="demo").parse_args(argv)
    overrides = parse_sets(args.set)
    common.setup(load_config(args.config, overrides).data_dir)
    text = paragraph(args.config, overrides)
    print(text)
    return text


if __name__ == "__main__":
    main()
