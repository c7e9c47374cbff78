import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("MEDTUNE_PROGRESS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
MEDQUAD = (ROOT.parent / "shared" / "medquad").resolve()
TINY = "tiny-random-llama"


def write_records(folder: Path, n_train=24, n_val=4, n_test=8):
    """A prepared-data folder with synthetic QA records (no real data needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    topics = ["glaucoma", "diabetes", "asthma", "anemia", "gout", "lupus", "migraine", "psoriasis"]
    counts = {"train": n_train, "val": n_val, "test": n_test}
    k = 0
    for split, n in counts.items():
        with open(folder / f"{split}.jsonl", "w") as fh:
            for i in range(n):
                t = topics[k % len(topics)]
                q = f"What are the symptoms of {t} number {k}?"
                a = (
                    f"The symptoms of {t} include "
                    + " and ".join(["pain", "fatigue", "thirst", "fever"][: 1 + k % 4])
                    + "." * (1 + k % 3)
                )
                fh.write(
                    json.dumps(
                        {
                            "id": f"{split}-{i}",
                            "question": q,
                            "answer": a,
                            "source": "SYN",
                            "focus": t,
                            "qtype": "symptoms",
                            "document_id": "",
                        }
                    )
                    + "\n"
                )
                k += 1
    return folder


@pytest.fixture
def prepared(tmp_path):
    return write_records(tmp_path / "prep")


@pytest.fixture(scope="session")
def tiny():
    from medtune import models

    models.resolve(TINY)
    return TINY


def run_cli(args, capsys):
    from medtune.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err
