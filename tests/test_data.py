import json
import zipfile

import pytest

from conftest import MEDQUAD, run_cli
from medtune.data.clean import clean_records, clean_text
from medtune.data.sources import ColumnMap, Record, load_records
from medtune.data.split import overlap, split_records
from medtune.infra.errors import MedtuneError

SPLITS = ("train", "val", "test")

XML = """<?xml version="1.0" encoding="UTF-8"?>
<Document id="0001" source="GARD" url="http://x">
<Focus>Gout &amp; Friends</Focus>
<QAPairs>
<QAPair pid="1"><Question qid="0001-1" qtype="symptoms">What are the symptoms of gout &lt;acute&gt; ?</Question>
<Answer>Pain   in the toe.    - Swelling here.    - Redness &amp; heat.</Answer></QAPair>
<QAPair pid="2"><Question qid="0001-2" qtype="treatment">How to treat gout ?</Question><Answer>   </Answer></QAPair>
<QAPair pid="3"><Question qid="0001-3" qtype="treatment">How to treat gout ?</Question></QAPair>
</QAPairs></Document>"""


def make_medquad(tmp_path, extra=None):
    root = tmp_path / "mq"
    (root / "2_GARD_QA").mkdir(parents=True)
    (root / "2_GARD_QA" / "0001.xml").write_text(XML)
    for name, text in (extra or {}).items():
        (root / "2_GARD_QA" / name).write_text(text)
    return root


def test_xml_entities_missing_answers_and_lists(tmp_path):
    recs = load_records(str(make_medquad(tmp_path)))
    assert len(recs) == 3
    kept, dropped = clean_records(recs)
    assert len(kept) == 1 and dropped["empty answer"] == 2
    r = kept[0]
    assert r.question == "What are the symptoms of gout <acute> ?"
    assert r.answer == "Pain in the toe.\n- Swelling here.\n- Redness & heat."  # list structure kept
    assert (r.focus, r.qtype, r.source, r.document_id, r.id) == ("Gout & Friends", "symptoms", "GARD", "0001", "0001-1")


def test_zip_source_matches_folder(tmp_path):
    root = make_medquad(tmp_path)
    z = tmp_path / "mq.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(root / "2_GARD_QA" / "0001.xml", "MedQuAD-master/2_GARD_QA/0001.xml")
    assert load_records(str(z)) == load_records(str(root))


def test_malformed_xml_is_named(tmp_path):
    root = make_medquad(tmp_path, {"0002.xml": "<Document><QAPairs>"})
    with pytest.raises(MedtuneError, match="0002.xml"):
        load_records(str(root))


def test_csv_kaggle_and_mapping(tmp_path):
    p = tmp_path / "k.csv"
    p.write_text(
        "question,answer,source,focus_area\n"
        '"What is (are) Glaucoma ?","Glaucoma is a group...",NIHSeniorHealth,Glaucoma\n'
    )
    (r,) = load_records(str(p))
    assert (r.question, r.answer, r.source, r.focus) == (
        "What is (are) Glaucoma ?",
        "Glaucoma is a group...",
        "NIHSeniorHealth",
        "Glaucoma",
    )
    bad = tmp_path / "b.csv"
    bad.write_text("q,a\nx,y\n")
    with pytest.raises(MedtuneError, match="lacks column"):
        load_records(str(bad))
    (r,) = load_records(str(bad), ColumnMap(question="q", answer="a"))
    assert (r.question, r.answer) == ("x", "y")
    twice = tmp_path / "t.csv"  # csv.DictReader keeps the last 'answer' and says nothing
    twice.write_text("question,answer,source,answer\nWhat is gout?,A kind of arthritis.,NIDDK,\n")
    with pytest.raises(MedtuneError, match=r"2 columns named 'answer' \(columns 2, 4\)"):
        load_records(str(twice))
    (r,) = load_records(str(twice), ColumnMap(answer="source"))  # an unambiguous column is still read
    assert r.answer == "NIDDK"


def test_jsonl_with_mapping(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"Q": "What is gout?", "A": "A kind of arthritis.", "topic": "Gout"}) + "\n")
    (r,) = load_records(str(p), ColumnMap(question="Q", answer="A", focus="topic"))
    assert (r.question, r.answer, r.focus) == ("What is gout?", "A kind of arthritis.", "Gout")
    with pytest.raises(MedtuneError, match="lacks column"):
        load_records(str(p))


def test_clean_drops_exact_duplicates():
    recs = [Record("1", "Q?", "A."), Record("2", " Q? ", "A. "), Record("3", "Q?", "B."), Record("4", "", "x")]
    kept, dropped = clean_records(recs)
    assert [r.id for r in kept] == ["1", "3"]
    assert dropped == {"exact duplicate pair": 1, "empty question": 1}
    assert clean_text("a\n\n\n\nb  c") == "a\n\nb c"


def test_grouped_split_has_no_overlap_and_is_deterministic():
    recs = []
    for i in range(200):
        focus = f"f{i % 37}"
        recs.append(Record(str(i), f"What is {focus} ?" if i % 3 else f"Question {i}", f"ans {i}", focus=focus))
    a = split_records(recs, "grouped", 0.2, 0.1, seed=3)
    b = split_records(recs, "grouped", 0.2, 0.1, seed=3)
    assert a == b
    assert overlap(a) == {"questions_in_several_splits": 0, "focus_entities_in_several_splits": 0}
    assert sum(len(v) for v in a.values()) == 200
    assert 20 <= len(a["test"]) <= 60
    r = split_records(recs, "random", 0.2, 0.0, seed=3)
    assert len(r["test"]) == 40 and not r["val"]
    assert overlap(r)["focus_entities_in_several_splits"] > 0  # why random leaks


@pytest.mark.skipif(not MEDQUAD.is_dir(), reason="needs ../shared/medquad")
def test_real_medquad_counts_and_grouped_split():
    recs = load_records(str(MEDQUAD))
    # 47,441 pairs in <Document>/<QAPair> files + 16 in 4 NINDS files of the older <doc>/<pair> layout = 47,457,
    # the count the dataset's own readme gives.
    assert len(recs) == 47_457
    non_empty = [r for r in recs if clean_text(r.question) and clean_text(r.answer)]
    assert len(non_empty) == 16_423  # 16,407 in the <QAPair> layout + 16 in the <doc> layout
    kept, dropped = clean_records(recs)
    assert dropped["exact duplicate pair"] == 48
    assert len(kept) == len(non_empty) - 48
    splits = split_records(kept, "grouped", 0.2, 0.05, seed=0)
    assert overlap(splits) == {"questions_in_several_splits": 0, "focus_entities_in_several_splits": 0}
    assert abs(len(splits["test"]) / len(kept) - 0.2) < 0.01


@pytest.mark.parametrize(
    "case",
    ["missing", "empty", "noxml", "malformed", "csvcols", "fraction", "xmldir", "truncatedcsv", "fewgroups"],
)
def test_prepare_bad_input_one_line_no_output(case, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["prepare", "--out", out, "--no-tokenize"]
    if case == "missing":
        args += ["--data", tmp_path / "nope"]
    elif case == "empty":
        (tmp_path / "e").mkdir()
        args += ["--data", tmp_path / "e"]
    elif case == "noxml":
        (tmp_path / "n").mkdir()
        (tmp_path / "n" / "readme.txt").write_text("hi")
        args += ["--data", tmp_path / "n"]
    elif case == "malformed":
        args += ["--data", make_medquad(tmp_path, {"0009.xml": "<Document><oops></Document>"})]
    elif case == "csvcols":
        (tmp_path / "c.csv").write_text("a,b\n1,2\n")
        args += ["--data", tmp_path / "c.csv"]
    elif case == "fraction":
        args += ["--data", make_medquad(tmp_path), "--test-fraction", "1.5"]
    elif case == "xmldir":  # a link to a file that is gone: FileNotFoundError out of read_bytes
        root = make_medquad(tmp_path)
        (root / "2_GARD_QA" / "0002.xml").symlink_to(tmp_path / "gone.xml")
        args += ["--data", root]
    elif case == "truncatedcsv":  # cut short inside a quoted answer: not a shorter last answer
        (tmp_path / "t.csv").write_text('question,answer\n"Q1?","A1."\n"Q2?","An answer cut sh')
        args += ["--data", tmp_path / "t.csv"]
    elif case == "fewgroups":  # one focus entity: one group, no train and test from it
        rows = "".join(f'"Question {i}?","Answer {i}.",S,gout\n' for i in range(8))
        (tmp_path / "g.csv").write_text("question,answer,source,focus_area\n" + rows)
        args += ["--data", tmp_path / "g.csv"]
    code, _, err = run_cli(args, capsys)
    assert {"xmldir": "cannot read", "truncatedcsv": "malformed CSV", "fewgroups": "form 1 group"}.get(case, "") in err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medtune: error:"), err
    assert "Traceback" not in err
    assert not out.exists() and not (tmp_path / "out.tmp").exists()


def test_prepare_writes_splits_and_stats(tmp_path, capsys, tiny):
    root = make_medquad(
        tmp_path,
        {
            f"1{i}.xml": XML.replace("0001", f"1{i}")
            .replace("Gout &amp; Friends", f"Focus {i}")
            .replace("gout", f"g{i}")
            for i in range(9)
        },
    )
    code, out, err = run_cli(
        ["prepare", "--data", root, "--out", tmp_path / "p", "--model", tiny, "--max-length", "16"], capsys
    )
    assert code == 0, err
    stats = json.loads((tmp_path / "p" / "stats.json").read_text())
    assert stats["rows_read"] == 30 and stats["rows_kept"] == 10 and stats["dropped"] == {"empty answer": 20}
    assert sum(s["count"] for s in stats["splits"].values()) == 10
    assert stats["splits"]["train"]["tokens"]["truncated_share"] > 0
    assert stats["overlap"]["questions_in_several_splits"] == 0


def test_ids_repeated_across_collections_are_made_unique(tmp_path, capsys):
    """MedQuAD numbers documents per collection: document 0049 of GHR and of NIDDK give the same
    ids. Prepared ids are unique (the source added only where an id repeats), and a sample keeps
    the order of the ids as read (so earlier preparations' data order and questions stay)."""
    from medtune.data.clean import unique_ids

    root = tmp_path / "mq"
    for folder, source in (("3_GHR_QA", "GHR"), ("5_NIDDK_QA", "NIDDK")):
        pairs = "".join(
            f'<QAPair pid="{k}"><Question qtype="x">What is {source} question {k} ?</Question>'
            f"<Answer>Answer {k} from {source}.</Answer></QAPair>"
            for k in range(1, 13)
        )
        (root / folder).mkdir(parents=True)
        (root / folder / "0049.xml").write_text(
            f'<Document id="0049" source="{source}"><Focus>{source} focus</Focus><QAPairs>{pairs}</QAPairs></Document>'
        )
    args = ["prepare", "--data", root, "--out", tmp_path / "p", "--no-tokenize", "--split", "random"]
    code, _, err = run_cli([*args, "--max-examples", "16"], capsys)
    assert code == 0, err
    prepared = {s: [json.loads(x) for x in (tmp_path / "p" / f"{s}.jsonl").read_text().splitlines()] for s in SPLITS}
    rows = [r for s in SPLITS for r in prepared[s]]
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids) == 16
    for r in rows:  # the id as read (document-pair), plus the source when another collection has it
        read = f"0049-{r['question'].split()[-2]}"
        assert r["id"] == (f"{read}+{r['source']}" if r["id"].startswith("0049-") else r["id"])
    for s in SPLITS:  # a sample is ordered by the ids as read; the source breaks no order
        bare = [r["id"].split("+")[0] for r in prepared[s]]
        assert bare == sorted(bare)
    stats = json.loads((tmp_path / "p" / "stats.json").read_text())
    assert stats["ids_made_unique"] == sum("+" in i for i in ids) > 0
    # same source and id twice, and a suffixed id meeting an id the data already had
    recs = [
        Record(id=i, question="q", answer="a", source=src)
        for i, src in [("x", "C"), ("x", "C"), ("a", "X"), ("a", "Y"), ("a+X", "Z"), ("b", "")]
    ]
    made = unique_ids(recs)
    assert len(set(made)) == len(made) and made[-1] == "b" and made[3] == "a+Y"
    assert all(m.startswith(r.id) for m, r in zip(made, recs))


@pytest.mark.parametrize("n", [5, 10, 11, 17])
def test_max_examples_keeps_that_many(n, tmp_path, capsys):
    """Each split's share is rounded (and kept >= 1): --max-examples 10 kept 11 before."""
    rows = "".join(f"What is disease {i} ?,It is rare {i}.,SYN,topic {i}\n" for i in range(60))
    (tmp_path / "qa.csv").write_text("question,answer,source,focus_area\n" + rows)
    args = ["prepare", "--data", tmp_path / "qa.csv", "--out", tmp_path / "p", "--no-tokenize"]
    code, _, err = run_cli([*args, "--max-examples", n], capsys)
    assert code == 0, err
    counts = [len((tmp_path / "p" / f"{s}.jsonl").read_text().splitlines()) for s in SPLITS]
    assert sum(counts) == n and min(counts) >= 1, counts
    code, _, err = run_cli([*args, "--force", "--max-examples", "2"], capsys)
    assert code == 2 and "max_examples 2 is too few" in err and len(err.strip().splitlines()) == 1, err


def test_parquet_with_mapping(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"q": ["What is gout?"], "a": ["Arthritis."]}), p)
    (r,) = load_records(str(p), ColumnMap(question="q", answer="a"))
    assert (r.question, r.answer) == ("What is gout?", "Arthritis.")


def test_default_download_offline_says_how_to_pass_a_path(tmp_path, monkeypatch):
    from medtune.data import sources

    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "MEDQUAD_URL", "http://127.0.0.1:9/medquad.zip")  # nothing listens there
    with pytest.raises(MedtuneError, match="--data PATH"):
        load_records(None)
    assert not (tmp_path / "cache" / "data" / "medquad.zip").exists()


def test_hub_dataset_without_datasets_or_offline_is_one_clear_error():
    with pytest.raises(MedtuneError, match="hub|offline|local path"):
        load_records("someone/medquad-copy")


def test_xml_files_at_every_depth_are_read_and_mac_metadata_skipped(tmp_path):
    """A collection folder with loose files beside it (or one level deeper) read only the first
    depth that matched; a folder unzipped on a Mac holds __MACOSX/ and ._name files."""
    root = make_medquad(tmp_path)
    (root / "0003.xml").write_text(XML.replace("0001", "0003"))
    (root / "deeper" / "4_X").mkdir(parents=True)
    (root / "deeper" / "4_X" / "0004.xml").write_text(XML.replace("0001", "0004"))
    (root / "__MACOSX" / "2_GARD_QA").mkdir(parents=True)
    (root / "__MACOSX" / "2_GARD_QA" / "._0001.xml").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "2_GARD_QA" / "._0001.xml").write_bytes(b"\x00\x05\x16\x07")
    (tmp_path / "elsewhere" / "5_Y").mkdir(parents=True)  # a collection folder linked in
    (tmp_path / "elsewhere" / "5_Y" / "0005.xml").write_text(XML.replace("0001", "0005"))
    (root / "5_Y").symlink_to(tmp_path / "elsewhere" / "5_Y")
    (root / "5_Y" / "loop").symlink_to(root)  # a link loop ends
    docs = sorted({r.document_id for r in load_records(str(root))})
    assert docs == ["0001", "0003", "0004", "0005"]


def test_non_latin_questions_are_grouped_and_counted(tmp_path):
    """An ASCII-only key made every Cyrillic or Chinese question the empty key: no grouping, so
    one question landed in every split, and the overlap count said 1 for all of them."""
    questions = [
        "Что такое подагра?",
        "痛风的症状是什么？",
        "Какие симптомы у гриппа?",
        "糖尿病怎么治疗？",
        "Что такое астма?",
    ]
    recs = [
        Record(id=f"{k}-{i}", question=q, answer=f"answer {k} {i}", source="S")
        for k, q in enumerate(questions)
        for i in range(8)
    ]
    splits = split_records(recs, "grouped", 0.2, 0.2, seed=0)
    for q in questions:  # each question in exactly one split
        assert sum(any(r.question == q for r in splits[name]) for name in SPLITS) == 1
    random = split_records(recs, "random", 0.2, 0.2, seed=0)
    expected = sum(len({n for n in SPLITS if any(r.question == q for r in random[n])}) > 1 for q in questions)
    assert overlap(random)["questions_in_several_splits"] == expected > 1


def test_hub_export_column_names_give_source_and_focus(tmp_path, capsys):
    """lavita/MedQuAD's columns: question_focus was not read, so the grouped split ignored focus
    entities and still printed 'overlap 0 focus entities'."""
    p = tmp_path / "lavita.jsonl"
    rows = [
        {"document_source": "GARD", "question_focus": f"focus {i // 3}", "question": f"Q {i}?", "answer": f"A {i}."}
        for i in range(30)
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = load_records(str(p))
    assert {(r.source, r.focus) for r in recs[:3]} == {("GARD", "focus 0")}
    code, out, err = run_cli(["prepare", "--data", p, "--out", tmp_path / "o", "--no-tokenize"], capsys)
    assert code == 0, err
    for name in SPLITS:  # a focus entity's three questions share one split
        focus = [json.loads(line)["focus"] for line in (tmp_path / "o" / f"{name}.jsonl").read_text().splitlines()]
        assert all(focus.count(f) == 3 for f in focus)
    assert "grouped by question text only" not in out
    p.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in rows))
    code, out, err = run_cli(["prepare", "--data", p, "--out", tmp_path / "o2", "--no-tokenize"], capsys)
    assert code == 0 and "grouped by question text only" in out, err


def test_a_full_disk_while_writing_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    import errno

    import medtune.data.prepare as prepare_mod

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prepare_mod, "write_json", full)
    out, data = tmp_path / "out", tmp_path / "qa.csv"
    data.write_text("question,answer\n" + "".join(f"Question {i}?,Answer {i}.\n" for i in range(20)))
    code, _, err = run_cli(["prepare", "--data", data, "--out", out, "--no-tokenize"], capsys)
    assert code == 2 and "No space left on device" in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_markup_inside_an_answer_is_kept(tmp_path):
    """.text stops at the first child element: "F1 is <b>very</b> rare." read as "F1 is"."""
    root = make_medquad(tmp_path)
    (root / "2_GARD_QA" / "0001.xml").write_text(
        XML.replace("Pain   in the toe.", "Pain <b>in</b> the <i>big</i> toe.")
    )
    kept, _ = clean_records(load_records(str(root)))
    assert kept[0].answer.startswith("Pain in the big toe.\n- Swelling here.")


def test_tsv_reads_like_csv(tmp_path):
    csv_file, tsv_file = tmp_path / "k.csv", tmp_path / "k.tsv"
    csv_file.write_text('question,answer,source,focus_area\n"What is gout, really?","A, B",S,gout\n')
    tsv_file.write_text("question\tanswer\tsource\tfocus_area\nWhat is gout, really?\tA, B\tS\tgout\n")
    assert [r.to_dict() | {"id": ""} for r in load_records(str(tsv_file))] == [
        r.to_dict() | {"id": ""} for r in load_records(str(csv_file))
    ]


def test_lenient_csv_quirks_still_read_and_tsv_quotes_are_text(tmp_path):
    """Strict parsing (for files cut short) refused a space after a closing quote, which the
    lenient parser reads right; a TSV field starting with a quote was refused too."""
    p = tmp_path / "q.csv"
    p.write_text('question,answer\n"What is gout?" ,Pain in the toe.\n')
    (r,) = load_records(str(p))
    assert (r.question.strip(), r.answer) == ("What is gout?", "Pain in the toe.")
    t = tmp_path / "q.tsv"
    t.write_text('question\tanswer\n"Lupus" is what?\tAn autoimmune disease.\n')
    (r,) = load_records(str(t))
    assert r.question == '"Lupus" is what?'


def test_a_failed_swap_puts_the_earlier_prepared_data_back(tmp_path, capsys, monkeypatch):
    """--force over an earlier folder: it was moved aside, the new one failed to move in, and the
    earlier one stayed hidden (removed by the next prepare): no prepared data at all."""
    import errno

    import medtune.data.prepare as prepare_mod

    data, out = tmp_path / "qa.csv", tmp_path / "out"
    data.write_text("question,answer\n" + "".join(f"Question {i}?,Answer {i}.\n" for i in range(20)))
    args = ["prepare", "--data", data, "--out", out, "--no-tokenize"]
    assert run_cli(args, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = prepare_mod.os.replace, []

    def failing_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new folder into place
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(src, dst)

    monkeypatch.setattr(prepare_mod.os, "replace", failing_second)
    code, _, err = run_cli([*args, "--seed", "3", "--force"], capsys)
    assert code == 2 and "it is unchanged" in err and len(err.strip().splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
