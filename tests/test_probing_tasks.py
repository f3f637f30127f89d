"""SentEval-style probing tasks from the Brown corpus (bermo.data.probing_tasks).

Each task's rule is checked on hand-written tagged sentences, then on one small build (120 / 60 / 60, cached for
the module): balanced classes, disjoint splits and target words, every label re-derived from the corpus, the
bigram swap and clause inversion undone back to a corpus sentence, determinism, loading, and the error messages.
The corpus is read from the shared data folder, never copied; without it the corpus tests are skipped.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bermo.data import probing_tasks as pt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROWN = os.path.join(ROOT, "..", "shared", "data", "brown")
needs_brown = pytest.mark.skipif(
    not os.path.isfile(os.path.join(BROWN, "ca01")),
    reason=f"the Brown corpus (shared data) is not at {os.path.normpath(BROWN)}",
)
SIZES = {"train_size": 120, "dev_size": 60, "test_size": 60}
SPLIT_SIZE = {"train": 120, "validation": 60, "test": 60}


def tagged(text: str) -> list[tuple[str, str]]:
    """A hand-written tagged sentence: ``"The/at dog/nn barks/vbz ./."``."""
    return [tuple(tok.rsplit("/", 1)) for tok in text.split()]


def words(sentence: list[tuple[str, str]]) -> str:
    return " ".join(w for w, _ in sentence)


# ------------------------------------------------------------------------------------------------------------
# The rules, on hand-written sentences
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, label",
    [(4, None), (5, 0), (8, 0), (9, 1), (12, 1), (13, 2), (16, 2), (17, 3), (20, 3), (21, 4), (25, 4), (26, 5),
     (28, 5), (29, None)],
)
def test_length_bins_at_their_boundaries(n, label):
    assert pt.length_label(n) == label


def test_word_content_needs_exactly_one_target_exactly_once():
    targets = ("city", "road")
    assert pt.word_content_label("The City is big .".split(), targets) == 0  # case-insensitive
    assert pt.word_content_label("A long road .".split(), targets) == 1
    assert pt.word_content_label("The city road .".split(), targets) is None  # two targets
    assert pt.word_content_label("City after city .".split(), targets) is None  # one target twice
    assert pt.word_content_label("Nothing here .".split(), targets) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("He/pps walked/vbd home/nr ./.", (1, 1)),
        ("He/pps walks/vbz home/nr ./.", (1, 0)),
        ("They/ppss walk/vb home/nr ./.", (1, 0)),  # base form after I/we/you/they is a finite present
        ("To/to walk/vb home/nr is/bez fun/nn ./.", (3, 0)),  # "to walk" is not finite: "is" is the verb
        ("To/to walk/vb home/nr was/bedz fun/nn ./.", (3, 1)),
        ("He/pps didn't/dod* go/vb ./.", (1, 1)),  # negated past auxiliary
        ("We're/ppss+ber here/rb ./.", (0, 0)),  # contraction: present by its verb part
        ("The/at dogs/nns run/vb ./.", (2, 0)),  # base form after a plural noun
        ("He/pps will/md go/vb ./.", None),  # modal: no tense on the tag
        ("When/wrb he/pps came/vbd ,/, they/ppss leave/vb ./.", None),  # first verb in a subordinate clause
        ("Go/vb home/nr ./.", None),  # imperative: no finite verb
    ],
)
def test_tense_of_the_first_finite_verb(text, expected):
    assert pt.tense_label(tagged(text)) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The/at dogs/nns bark/vb ./.", (1, 1)),
        ("The/at dog/nn barks/vbz ./.", (1, 0)),
        ("The/at old/jj farm/nn dogs/nns barked/vbd ./.", (3, 1)),  # head = last noun of the run
        ("The/at City/nn-tl Council/nn-tl met/vbd ./.", (2, 0)),  # -tl stripped
        ("In/in 1960/cd ,/, the/at farmers/nns often/rb sold/vbd corn/nn ./.", (4, 1)),  # after a comma, adverb
        ("The/at dogs/nns will/md bark/vb ./.", (1, 1)),  # modals allowed
        ("John/np left/vbd ./.", None),  # proper noun
        ("He/pps left/vbd ./.", None),  # pronoun
        ("The/at number/nn of/in voters/nns was/bedz high/jj ./.", None),  # head is not the noun before the verb
        ("The/at dogs/nns is/bez here/rb ./.", None),  # the verb contradicts the noun
    ],
)
def test_subject_number_of_the_noun_before_the_verb(text, expected):
    assert pt.subject_number(tagged(text)) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("He/pps bought/vbd three/cd old/jj books/nns ./.", (4, 1)),
        ("He/pps bought/vbd a/at book/nn ./.", (3, 0)),
        ("She/pps has/hvz not/* yet/rb found/vbn the/at election/nn laws/nns ./.", (7, 1)),  # verb group, run head
        ("He/pps picked/vbd up/rp the/at book/nn ./.", (4, 0)),  # particle
        ("He/pps is/bez a/at doctor/nn ./.", None),  # be: predicate, not object
        ("He/pps became/vbd a/at doctor/nn ./.", None),  # copular lexical verb
        ("He/pps went/vbd to/in the/at stores/nns ./.", None),  # preposition first
        ("He/pps saw/vbd them/ppo ./.", None),  # pronoun
        ("He/pps met/vbd John/np ./.", None),  # proper noun
    ],
)
def test_object_number_of_the_noun_phrase_after_the_verb_group(text, expected):
    assert pt.object_number(tagged(text)) == expected


def test_bigram_shift_swaps_two_adjacent_non_punctuation_non_initial_tokens():
    sent = tagged("The/at cat/nn ,/, sat/vbd on/in the/at the/at mat/nn ./.")
    # 0: first token; 1: "cat ,"; 2: ", sat"; 5: "the the" (a swap would change nothing); 7: "mat ."
    assert pt.bigram_shift_positions(sent) == [3, 4, 6]
    shifted = pt.swap_bigram(sent, 3)
    assert words(shifted) == "The cat , on sat the the mat ."
    assert words(sent) == "The cat , sat on the the mat ."  # the input is not modified


def test_coordination_inversion_puts_the_second_clause_first():
    sent = tagged("The/at dog/nn barked/vbd loudly/rb ,/, and/cc the/at cat/nn ran/vbd ./.")
    parts = pt.coordination_split(sent)
    assert parts is not None
    assert words(parts.first) == "The dog barked loudly" and words(parts.second) == "the cat ran"
    assert words(pt.invert_coordination(parts)) == "The cat ran , and the dog barked loudly ."
    # "I" and proper nouns keep their capital when they leave the sentence start
    parts = pt.coordination_split(tagged("I/ppss left/vbd early/rb but/cc the/at party/nn went/vbd on/rp ./."))
    assert words(pt.invert_coordination(parts)) == "The party went on but I left early ."
    parts = pt.coordination_split(tagged("John/np left/vbd early/rb but/cc the/at party/nn went/vbd on/rp ./."))
    assert words(pt.invert_coordination(parts)) == "The party went on but John left early ."
    # past an opening quote
    parts = pt.coordination_split(
        tagged("``/`` Fine/jj ''/'' ,/, he/pps said/vbd ,/, and/cc the/at cat/nn ran/vbd ./.")
    )
    assert words(pt.invert_coordination(parts)) == "The cat ran , and `` fine '' , he said ."
    # capitals that stand anywhere keep theirs: a lower-cased "i'm" or "sunday" would mark the inverted sentences
    parts = pt.Coordination(tagged("I'm/ppss+bem tired/jj"), (",", ","), ("and", "cc"),
                            tagged("the/at rain/nn falls/vbz"), tagged("./."))
    assert words(pt.invert_coordination(parts)) == "The rain falls , and I'm tired ."
    parts = pt.Coordination(tagged("Sunday/nr brunches/nns continue/vb"), None, ("but", "cc"),
                            tagged("the/at buffets/nns stopped/vbd"), tagged("./."))
    assert words(pt.invert_coordination(parts)) == "The buffets stopped but Sunday brunches continue ."
    for day, tag in (("Sundays", "nrs"), ("Monday's", "nr$")):
        parts = pt.Coordination(tagged(f"{day}/{tag} brunches/nns continue/vb"), None, ("but", "cc"),
                                tagged("the/at buffets/nns stopped/vbd"), tagged("./."))
        assert words(pt.invert_coordination(parts)) == f"The buffets stopped but {day} brunches continue ."
    parts = pt.Coordination(tagged("Today/nr brunches/nns continue/vb"), None, ("but", "cc"),
                            tagged("the/at buffets/nns stopped/vbd"), tagged("./."))
    assert words(pt.invert_coordination(parts)) == "The buffets stopped but today brunches continue ."


@pytest.mark.parametrize(
    "text",
    [
        "He/pps came/vbd home/nr and/cc went/vbd to/in bed/nn ./.",  # no subject in the second conjunct
        "The/at dog/nn barked/vbd and/cc the/at cat/nn ran/vbd ./.",  # clauses of equal length
        "The/at dog/nn barked/vbd and/cc the/at cat/nn and/cc bird/nn ran/vbd ./.",  # two conjunctions
        "The/at dog/nn barked/vbd and/cc the/at cat/nn ran/vbd ;/. it/pps rained/vbd ./.",  # inner punctuation
        "The/at dog/nn barked/vbd and/cc ``/`` the/at cat/nn ran/vbd ./.",  # a quote opened, not closed
        "He/pps said/vbd the/at big/jj and/cc the/at old/jj dogs/nns ran/vbd ./.",  # first part ends in an adj
    ],
)
def test_coordination_needs_one_conjunction_between_two_clauses(text):
    assert pt.coordination_split(tagged(text)) is None


def test_tags_lose_title_headline_and_negation_marks():
    assert pt.base_tag("nn-tl-hl") == "nn" and pt.base_tag("---hl") == "--" and pt.base_tag("fw-nn") == "fw-nn"
    assert pt.tag_parts("ppss+ber") == ("ppss", "ber") and pt.tag_parts("bedz*") == ("bedz",)
    assert pt.tag_parts("*") == ("*",)


# ------------------------------------------------------------------------------------------------------------
# The corpus and one small build
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def brown():
    """The corpus, read once: its sentences and text -> tagged sentence."""
    if not os.path.isfile(os.path.join(BROWN, "ca01")):
        pytest.skip(f"the Brown corpus (shared data) is not at {os.path.normpath(BROWN)}")
    sentences = pt.read_brown(BROWN)
    by_text = {}
    for sent in sentences:
        by_text.setdefault(words(sent), sent)
    return sentences, by_text


@pytest.fixture(scope="module")
def built(brown, tmp_path_factory):
    out = tmp_path_factory.mktemp("probing")
    infos = pt.build_probing_tasks(BROWN, out, **SIZES, seed=0)
    return out, infos


def rows(out: Path, task: str, split: str) -> list[dict]:
    with open(out / task / f"{split}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@needs_brown
def test_read_brown_reads_the_corpus_files_only(brown):
    sentences, _ = brown
    assert len(sentences) == 57340
    assert sentences[0][:3] == [("The", "at"), ("Fulton", "np-tl"), ("County", "nn-tl")]
    assert all(tag for sent in sentences for _, tag in sent)  # no cats.txt / README line ("ca01 news")
    # this copy doubles a final ? ! ; on every such line: read once
    ends = Counter(sent[-1][0] for sent in sentences if sent[-1][0] in "?!;")
    assert ends["?"] > 2000 and ends["!"] > 700 and ends[";"] > 2500
    assert not any(len(s) > 1 and s[-1] == s[-2] and s[-1][0] in "?!;" for s in sentences)


@needs_brown
def test_every_split_is_balanced(built):
    out, infos = built
    for task in pt.TASKS:
        names = infos[task]["label_names"]
        for split, size in SPLIT_SIZE.items():
            labels = Counter(r["label"] for r in rows(out, task, split))
            per = size // len(names)
            assert labels == {i: per for i in range(len(names))}, (task, split)
            assert infos[task]["counts"][split]["per_label"] == {n: per for n in names}
    assert len(infos["word_content"]["label_names"]) == pt.WORD_CONTENT_K


@needs_brown
def test_splits_hold_disjoint_sentences(built):
    out, _ = built
    for task in pt.TASKS:
        texts = {split: [r["sentence"] for r in rows(out, task, split)] for split in SPLIT_SIZE}
        for split, t in texts.items():
            assert len(set(t)) == len(t), (task, split)
        assert not set(texts["train"]) & set(texts["validation"]), task
        assert not set(texts["train"]) & set(texts["test"]), task
        assert not set(texts["validation"]) & set(texts["test"]), task


@needs_brown
def test_labels_follow_the_rules_on_the_corpus_sentences(built, brown):
    out, infos = built
    _, by_text = brown
    for split in SPLIT_SIZE:
        for r in rows(out, "sentence_length", split):
            assert pt.length_label(len(r["sentence"].split())) == r["label"]
        targets = infos["word_content"]["label_names"]
        for r in rows(out, "word_content", split):
            assert pt.word_content_label(r["sentence"].split(), targets) == r["label"]
        for task, rule in [("tense", pt.tense_label), ("subject_number", pt.subject_number),
                           ("object_number", pt.object_number)]:
            for r in rows(out, task, split):
                found = rule(by_text[r["sentence"]])  # an unchanged corpus sentence
                assert found is not None and found[1] == r["label"], (task, r)


@needs_brown
def test_target_words_belong_to_one_split(built, brown):
    out, infos = built
    _, by_text = brown
    for task, rule in [("tense", pt.tense_label), ("subject_number", pt.subject_number),
                       ("object_number", pt.object_number)]:
        targets = {}
        for split in SPLIT_SIZE:
            found = [rule(by_text[r["sentence"]]) for r in rows(out, task, split)]
            targets[split] = {by_text[r["sentence"]][i][0].lower() for r, (i, _) in
                              zip(rows(out, task, split), found)}
            assert sorted(targets[split]) == infos[task]["target_words"][split]
        assert len(targets["train"]) > 20, task  # drawn round-robin over many words, not a few frequent ones
        assert not targets["train"] & targets["validation"], task
        assert not targets["train"] & targets["test"], task
        assert not targets["validation"] & targets["test"], task


@needs_brown
def test_bigram_shift_examples_undo_to_corpus_sentences(built, brown):
    out, _ = built
    _, by_text = brown
    for split in SPLIT_SIZE:
        for r in rows(out, "bigram_shift", split):
            toks = r["sentence"].split()
            if r["label"] == 0:
                assert r["sentence"] in by_text
                continue
            assert r["sentence"] not in by_text
            undone = [i for i in range(len(toks) - 1)
                      if " ".join(toks[:i] + [toks[i + 1], toks[i]] + toks[i + 2:]) in by_text]
            assert undone, r
            original = by_text[" ".join(toks[:undone[0]] + [toks[undone[0] + 1], toks[undone[0]]] +
                                        toks[undone[0] + 2:])]
            assert any(i >= 1 and not pt.is_punctuation(*original[i]) and not pt.is_punctuation(*original[i + 1])
                       for i in undone), r


@needs_brown
def test_coordination_examples_are_originals_or_inversions_balanced_by_longer_clause(built, brown):
    out, _ = built
    sentences, _ = brown
    originals, inverted = {}, {}
    for sent in sentences:
        parts = pt.coordination_split(sent)
        if parts is not None:
            originals[words(sent)] = parts
            inverted[words(pt.invert_coordination(parts))] = parts
    for split in SPLIT_SIZE:
        longer_first = Counter()
        for r in rows(out, "coordination_inversion", split):
            parts = (originals if r["label"] == 0 else inverted).get(r["sentence"])
            assert parts is not None, r
            first, second = (parts.first, parts.second) if r["label"] == 0 else (parts.second, parts.first)
            longer_first[r["label"]] += len(first) > len(second)
        per = SPLIT_SIZE[split] // 2
        for label in (0, 1):
            assert abs(longer_first[label] - per / 2) <= 0.5, (split, label, longer_first)


@needs_brown
def test_odd_man_out_replaces_one_noun_or_verb_by_a_split_own_word_of_same_tag_and_frequency(built, brown):
    out, infos = built
    sentences, by_text = brown
    freq = Counter(w.lower() for sent in sentences for w, _ in sent)
    tag_counts = Counter((w.lower(), t) for sent in sentences for w, t in sent)
    dominant = {}
    for (w, t), c in sorted(tag_counts.items()):
        if c > dominant.get(w, (0, ""))[0]:
            dominant[w] = (c, t)
    candidates_by_shape = {}
    for text, sent in by_text.items():
        candidates_by_shape.setdefault((len(sent), sent[0][0]), []).append(sent)
    replacements = {split: set(infos["odd_man_out"]["replacement_words"][split]) for split in SPLIT_SIZE}
    assert not replacements["train"] & replacements["validation"]
    assert not replacements["train"] & replacements["test"]
    assert not replacements["validation"] & replacements["test"]
    low, high = pt.ODD_MAN_OUT_FREQ
    for split in SPLIT_SIZE:
        for r in rows(out, "odd_man_out", split):
            toks = r["sentence"].split()
            if r["label"] == 0:
                assert r["sentence"] in by_text
                continue
            assert r["sentence"] not in by_text
            diffs = [
                [(i, sent[i], toks[i]) for i in range(len(toks)) if sent[i][0] != toks[i]]
                for sent in candidates_by_shape.get((len(toks), toks[0]), [])
            ]
            one = [d[0] for d in diffs if len(d) == 1]
            assert one, r
            i, (old, tag), new = one[0]
            assert i >= 1 and tag in pt.ODD_MAN_OUT_TAGS
            assert dominant[old][1] == tag == dominant[new][1]
            assert low <= freq[old] <= high and low <= freq[new] <= high
            assert max(freq[old], freq[new]) <= pt.ODD_MAN_OUT_MAX_RATIO * min(freq[old], freq[new])
            assert new in replacements[split]


@needs_brown
def test_task_json_and_readme_describe_the_build(built, brown):
    out, infos = built
    sentences, _ = brown
    # every task draws from the distinct texts of 5-50 tokens without headline tags (duplicates would leak
    # across splits)
    pool = {words(s) for s in sentences
            if pt.MIN_TOKENS <= len(s) <= pt.MAX_TOKENS and not any("-hl" in t for _, t in s)}
    assert infos["tense"]["source"]["sentences"] == len(pool) < 57340
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "SentEval" in readme
    for task in pt.TASKS:
        info = json.loads((out / task / "task.json").read_text(encoding="utf-8"))
        assert info == json.loads(json.dumps(infos[task]))
        assert info["seed"] == 0 and info["sizes"] == {"train": 120, "validation": 60, "test": 60}
        assert info["construction"] and info["construction"][:40] in readme
        assert f"| {task} |" in readme
        assert min(info["available"]["eligible_per_label"].values()) > 0
        assert str(BROWN) not in json.dumps(info)  # no machine-specific path: builds compare byte for byte


@needs_brown
def test_same_inputs_give_byte_identical_files_and_another_seed_differs(built, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    # In another process with another string-hash seed, so that an unsorted set or Python's hash() shows up; the
    # module is loaded from its file alone (it imports nothing from bermo).
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('probing_tasks', {pt.__file__!r})\n"
        "pt = importlib.util.module_from_spec(spec); sys.modules['probing_tasks'] = pt; spec.loader.exec_module(pt)\n"
        f"pt.build_probing_tasks({BROWN!r}, {str(again)!r}, train_size=120, dev_size=60, test_size=60, seed=0)\n"
    )
    hash_seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "PYTHONHASHSEED": hash_seed})
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert len(files) == 4 * len(pt.TASKS) + 1
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = tmp_path / "other"
    few = ["sentence_length", "tense", "bigram_shift"]
    pt.build_probing_tasks(BROWN, other, tasks=few, **SIZES, seed=1)
    for task in few:
        assert (out / task / "train.jsonl").read_bytes() != (other / task / "train.jsonl").read_bytes(), task


@needs_brown
def test_load_probing_task_returns_the_three_splits(built):
    datasets = pytest.importorskip("datasets")
    out, infos = built
    ds = pt.load_probing_task(out, "tense")
    assert isinstance(ds, datasets.DatasetDict)
    assert set(ds) == {"train", "validation", "test"}
    for split, size in SPLIT_SIZE.items():
        assert ds[split].column_names == ["sentence", "label"] and ds[split].num_rows == size
    assert ds["train"].features["label"].names == ["present", "past"]
    assert ds["test"][0]["sentence"] == rows(out, "tense", "test")[0]["sentence"]


@needs_brown
def test_coordination_inversion_is_capped_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="coordination_inversion.*capped at 1600"):
        infos = pt.build_probing_tasks(BROWN, tmp_path, tasks="coordination_inversion")  # default 2000/500/500
    info = infos["coordination_inversion"]
    assert info["split_sizes"] == {"train": 1066, "validation": 266, "test": 266}
    assert [info["counts"][s]["per_label"] for s in pt.SPLITS] == [
        {"original": 533, "inverted": 533}, {"original": 133, "inverted": 133}, {"original": 133, "inverted": 133}
    ]
    assert "capped at 1600 in all (asked 3000)" in (tmp_path / "README.md").read_text(encoding="utf-8")


def test_capped_split_sizes_keep_one_example_per_class():
    """Scaling a split down to the cap kept 1 example of an asked 2 (then 'ask for at least 2', which was asked)."""
    with pytest.warns(UserWarning, match="capped at 1600"):
        sizes = pt._capped_sizes("coordination_inversion", {"train": 5000, "validation": 2, "test": 2})
    assert sizes == {"train": 1596, "validation": 2, "test": 2}
    with pytest.warns(UserWarning):
        assert pt._capped_sizes("coordination_inversion", {"train": 5000, "validation": 1, "test": 3})["validation"] == 1


# ------------------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------------------


def test_missing_brown_folder_is_named(tmp_path):
    missing = tmp_path / "no-brown-here"
    with pytest.raises(FileNotFoundError, match="Brown corpus folder not found.*no-brown-here"):
        pt.build_probing_tasks(missing, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no Brown corpus files"):
        pt.read_brown(tmp_path)


def test_unknown_task_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="tree_depth") as err:
        pt.build_probing_tasks(BROWN, tmp_path, tasks=["tense", "tree_depth"])
    assert all(task in str(err.value) for task in pt.TASKS)
    with pytest.raises(ValueError, match="valid tasks are sentence_length, word_content"):
        pt.load_probing_task(tmp_path, "top_constituents")


def test_sizes_must_be_positive_ints(tmp_path):
    with pytest.raises(ValueError, match="positive int"):
        pt.build_probing_tasks(BROWN, tmp_path, train_size=0)


@needs_brown
def test_a_size_the_corpus_cannot_supply_names_task_size_and_availability(tmp_path):
    with pytest.raises(ValueError) as err:
        pt.build_probing_tasks(BROWN, tmp_path, tasks=["sentence_length", "word_content"], train_size=1_000_000)
    message = str(err.value)
    assert "'sentence_length'" in message and "train=1000000" in message
    assert "26-28: 35" in message and "at most about 21" in message  # the smallest bin bounds the build
    with pytest.raises(ValueError, match="'word_content'.*'validation' of size 20 .* 30 classes"):
        pt.build_probing_tasks(BROWN, tmp_path, tasks="word_content", train_size=60, dev_size=20, test_size=20)


@needs_brown
def test_loading_a_task_that_was_not_built_says_how_to_build_it(built):
    out, _ = built
    with pytest.raises(FileNotFoundError, match="'tense' is not built.*build_probing_tasks"):
        pt.load_probing_task(out / "elsewhere", "tense")
