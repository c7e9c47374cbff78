"""Print the stage keys medtune 0.1.0 computes, as JSON: the golden file of tests/test_identity.py.

Run it with the 0.1.0 tree on the path (the tag v0.1.0 is commit 0c07dd8):

    git worktree add --detach /work/wt/v010 v0.1.0
    PYTHONPATH=/work/wt/v010/src MEDTUNE_PROGRESS=0 .venv/bin/python tests/golden/make_stage_keys.py \
        > tests/golden/stage_keys_v0.1.0.json

It imports only 0.1.0's own modules (medtune.compare, medtune.config, medtune.tune, medtune.quality,
medtune.study). The train and evaluate keys were computed inline in 0.1.0's compare.py
(Comparison.train_stage, Comparison.evaluate_stage, SharedWork.for_comparison): those lines are
copied below as they stand there. No data is read and no model loads; a prepared folder's
fingerprint (which tuning and the shared work hash) is the fixed text FINGERPRINT.
"""

import json
import sys
from dataclasses import asdict

FINGERPRINT = "data-fingerprint"  # stands for data_fingerprint(prepared folder)
TUNED_LR = 0.00123  # a learning rate tuning chose (run_with's lr)

# (preset, --set overrides): the three presets as shipped, then the settings whose keys 0.1.0
# treats specially (report-only, execution-only, an eval sample, unset keys, more seeds).
CASES = [
    ("cpu-demo", []),
    ("cpu-study", []),
    ("tiny-study", []),
    ("tiny-study", ["eval.max_examples=8"]),
    ("tiny-study", ["eval.bootstrap=300", "eval.seed=5"]),
    ("tiny-study", ["train.micro_batch_tokens=256", "train.threads=1", "eval.batch_tokens=512", "train.log_every=5"]),
    ("tiny-study", ["quality.enabled=false", "samples=0"]),
    ("tiny-study", ["tune.train_seed=1000"]),
    ("cpu-study", ["tune.sampler=tpe", "tune.n_trials=5", "tune.storage=sqlite:///elsewhere.db"]),
    ("cpu-demo", ["methods.lora.lr=1e-4", "train.seeds=2", "train.lr=2e-4", "description=other"]),
    ("cpu-demo", ["quality.enabled=false", "samples=0", "eval.seed=3", "data.val_fraction=0"]),
]


def keys_of(preset: str, overrides: list) -> dict:
    from medtune import quality  # noqa: I001 (0.1.0's modules, not in this tree)
    from medtune.compare import identity_of, load_compare_config, prep_key
    from medtune.config import config_hash, experiment_of, run_identity, run_with, scoring_of
    from medtune.study import run_names
    from medtune.tune import TuneContext, method_space

    cfg = load_compare_config(preset, overrides=overrides)
    prep = prep_key(cfg)
    keys = {"comparison": identity_of(cfg), "prepare": prep, "quality": config_hash(quality.stage_key(cfg))}
    keys["shared"] = config_hash({"model": cfg.model, "data": FINGERPRINT, "format": asdict(cfg.format)})
    ctx = TuneContext(cfg, None, None, None, FINGERPRINT, None)

    def eval_keys(name: str, run_key: str) -> None:  # Comparison.evaluate_stage
        scoring = experiment_of({"eval": asdict(cfg.eval)})["eval"]
        earlier = {**quality.stage_key(cfg), "seed": cfg.eval.seed}
        found = [
            config_hash({"prep": prep, "eval": e, "run": run_key, "quality": q})
            for e, q in ((scoring_of(scoring), quality.stage_key(cfg)), (scoring, earlier))
        ]
        if cfg.eval.max_examples:
            found = [config_hash({"first": found[0], "subset": "seeded sample"})]
        keys[f"eval:{name}"] = found[0]
        if len(found) > 1:
            keys[f"eval-before-0.1.0:{name}"] = found[1]

    eval_keys("base", "base")
    for method in cfg.methods:
        rc = cfg.run_config(method)
        if cfg.tune.enabled:
            space = method_space(ctx, method)
            keys[f"tuning:{method}"] = space.study_name
            if space.earlier_name:
                keys[f"tuning-before-0.1.0:{method}"] = space.earlier_name
        for lr, tag in ((None, ""), (TUNED_LR, "@tuned")):
            for name, seed in run_names(method, cfg.train.seeds, cfg.train.seed):
                k = config_hash({"prep": prep, "run": run_identity(run_with(rc, lr, seed).to_dict())})
                keys[f"train:{name}{tag}"] = k  # Comparison.train_stage
                eval_keys(f"{name}{tag}", k)
    return keys


def main() -> None:
    import medtune

    cases = [{"preset": p, "overrides": o, "keys": keys_of(p, o)} for p, o in CASES]
    out = {"release": medtune.__version__, "fingerprint": FINGERPRINT, "tuned_lr": TUNED_LR, "cases": cases}
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
