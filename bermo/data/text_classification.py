"""Text-classification data for ``bermo train`` / ``bermo eval``: a GLUE task from the Hugging Face Hub, or local
TSV / CSV / JSON-lines files, loaded through HF ``datasets`` into one shape (:class:`TextClassificationData`), so
the command line handles both the same way.

The local-file rules are strict on purpose: a quote, an empty text or a label the model was not trained on would
otherwise turn into a silently wrong training set (shifted columns, a text of "nan", a new class id), which shows
up much later as a diverging or suspiciously good run. Every check fails with the file, the column and the row.

Needs ``datasets`` (``pip install "bermo[train]"``). It is imported inside the functions, so ``import bermo.data``
does not import it.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

if TYPE_CHECKING:  # pragma: no cover - typing only
    import datasets

PathLike = Union[str, "os.PathLike[str]"]

#: The splits a :class:`TextClassificationData` can hold, in this order.
SPLITS: Tuple[str, ...] = ("train", "validation", "test")

#: The Hub dataset the GLUE tasks are loaded from.
GLUE_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTaskSpec:
    """How one GLUE task looks in ``nyu-mll/glue``: its text columns (one, or two for sentence pairs), label column,
    number of classes and the names of its validation and test splits (MNLI has matched/mismatched ones; the
    matched ones are used)."""

    text_columns: Tuple[str, ...]
    num_labels: int
    label_column: str = "label"
    validation_split: str = "validation"
    test_split: str = "test"


#: The GLUE classification tasks, by config name in ``nyu-mll/glue``. STS-B is a regression task and is refused
#: (see :data:`GLUE_REGRESSION_TASKS`); the diagnostic ``ax`` set has no training data.
GLUE_TASKS: Dict[str, GlueTaskSpec] = {
    "cola": GlueTaskSpec(("sentence",), 2),
    "sst2": GlueTaskSpec(("sentence",), 2),
    "mrpc": GlueTaskSpec(("sentence1", "sentence2"), 2),
    "qqp": GlueTaskSpec(("question1", "question2"), 2),
    "mnli": GlueTaskSpec(("premise", "hypothesis"), 3, validation_split="validation_matched",
                         test_split="test_matched"),
    "qnli": GlueTaskSpec(("question", "sentence"), 2),
    "rte": GlueTaskSpec(("sentence1", "sentence2"), 2),
    "wnli": GlueTaskSpec(("sentence1", "sentence2"), 2),
}

#: GLUE tasks that are not classification, with the reason they are refused.
GLUE_REGRESSION_TASKS: Dict[str, str] = {
    "stsb": "STS-B is a regression task (similarity scores from 0 to 5), not classification",
}

#: Text columns tried, in this order, when ``text_columns`` is not given: the pairs first (QNLI's
#: ``question,sentence`` also has a ``sentence`` column), then the single-sentence names.
PAIR_TEXT_COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("sentence1", "sentence2"),
    ("question", "sentence"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
)
SINGLE_TEXT_COLUMNS: Tuple[str, ...] = ("sentence", "text")

# file extension -> format; all files of one load share a format
_FORMATS: Dict[str, str] = {".tsv": "tsv", ".csv": "csv", ".json": "json", ".jsonl": "json"}
_FORMAT_NOTES: Dict[str, str] = {"tsv": "tab separated, a header line, no quoting",
                                 "csv": "comma separated, a header line, CSV quoting",
                                 "json": "JSON lines, one object per line"}
_FORMAT_HELP = (f".tsv ({_FORMAT_NOTES['tsv']}), .csv ({_FORMAT_NOTES['csv']}) "
                f"or .json/.jsonl ({_FORMAT_NOTES['json']})")
_INT_LABEL = re.compile(r"[+-]?\d+")
# Exception types (by name, to cover requests, httpx, urllib3 and huggingface_hub without importing them) that
# mean the Hub could not be reached, anywhere in the chain of a load_dataset failure.
_NETWORK_ERROR_NAMES = frozenset({
    "ConnectionError", "ConnectTimeout", "ConnectError", "ReadTimeout", "Timeout", "TimeoutException",
    "MaxRetryError", "NameResolutionError", "NewConnectionError", "gaierror", "OfflineModeIsEnabled",
    "LocalEntryNotFoundError",
})


@dataclass
class TextClassificationData:
    """A text-classification data set, whatever it was loaded from.

    ``datasets`` holds the splits present among ``train`` / ``validation`` / ``test``; their labels are ints
    ``0..num_labels-1`` in the column ``label`` (a ``ClassLabel`` named by ``label_names``). A split without a
    ``label`` column is unlabeled: only a test split can be (prediction only). Other columns of the files (an
    ``idx``, extra metadata) are kept here and dropped by :func:`tokenize`.
    """

    datasets: "datasets.DatasetDict"
    #: one column (single sentence) or two (sentence pairs), in the order they are given to the tokenizer
    text_columns: Tuple[str, ...]
    num_labels: int
    #: label id -> the original label, as a string as it appeared in the data (e.g. "0", "1" or "entailment")
    label_names: List[str]
    #: human readable origin: "glue/sst2", or "train=PATH, validation=PATH"
    source: str

    @property
    def id2label(self) -> Dict[int, str]:
        """``{id: original label}``, the form a model config's ``id2label`` takes."""
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> Dict[str, int]:
        """``{original label: id}``, the form a model config's ``label2id`` takes."""
        return {name: i for i, name in enumerate(self.label_names)}


def load_text_classification(task: Optional[str] = None, train_file: Optional[PathLike] = None,
                             validation_file: Optional[PathLike] = None, test_file: Optional[PathLike] = None,
                             text_columns: Optional[Union[str, Sequence[str]]] = None, label_column: str = "label",
                             label_names: Optional[Sequence[str]] = None,
                             cache_dir: Optional[PathLike] = None) -> TextClassificationData:
    """Load a GLUE task (``task``, from the Hub) or local files (``train_file`` / ``validation_file`` /
    ``test_file``, any of them); exactly one of the two sources.

    GLUE: ``task`` is a key of :data:`GLUE_TASKS` (``"sst2"``; ``"SST-2"`` and ``"glue/sst2"`` are accepted too),
    loaded with ``datasets.load_dataset("nyu-mll/glue", task)``; MNLI's matched validation and test sets become
    ``validation`` and ``test``. GLUE's test labels are hidden (all -1), so its test split comes back unlabeled.
    Where the Hub cannot be reached and the task is not in the datasets cache, a ``ConnectionError`` says so and
    points to local files. ``text_columns``, ``label_column`` and ``label_names`` are fixed by the task and
    refused with it.

    Local files, by extension: ``.tsv`` (GLUE style: a header line, tab separated and *not* quoted, so a quote is
    literal text), ``.csv`` (CSV quoting), ``.json`` / ``.jsonl`` (JSON lines). All files share one format. Every
    TSV/CSV value is read as a string (a text "NA" or "007" stays what it is); JSON numbers in a text column
    become strings. A first data row with more fields than the header (a tab inside a TSV text) is an error, not
    a silent column shift. Errors give the data row, and for TSV/CSV its line (counting the header).

    - Text columns: ``text_columns`` (one or two names, or "a,b"), or inferred from the first file (train, else
      validation, else test): the pairs ``sentence1,sentence2``, ``question,sentence``, ``question1,question2``,
      ``premise,hypothesis``, then ``sentence`` or ``text``. An empty (or blank) text is an error.
    - Labels, in ``label_column``: when ``label_names`` is given, each label is looked up in it (ids are positions
      in ``label_names``), or, where none of the labels is a name but all are integers below
      ``len(label_names)``, taken as the id itself (``label_names`` then only names the ids). Otherwise they are
      mapped from the training file (or, without one, the first labeled file): integer labels that are exactly
      ``0..K-1`` keep their values as ids; other integers are numbered in numeric order; anything else in sorted
      string order. A validation or test label outside that set is an error (a model cannot predict a class it
      was not trained on), and so is an empty label in a training or validation file. Without a training file,
      pass the trained model's labels as ``label_names`` so the ids match its head.
    - A test file may have no label column, or an entirely empty one: it is then loaded unlabeled, for prediction.

    The files go through ``datasets``' cache (``cache_dir``, else its default). A file's cache entry is keyed by its
    content hash as well as its path and modification time, so editing a file (even within the same second, or
    keeping its mtime) is always seen on the next load.

    Raises ``ValueError`` (both or neither source, unknown task, an unreadable or inconsistent file, a missing
    column, an empty text or label, an unknown label), ``FileNotFoundError`` (a missing file) and
    ``ConnectionError`` (GLUE without the Hub).
    """
    files = {split: os.fspath(path) for split, path in zip(SPLITS, (train_file, validation_file, test_file))
             if path is not None}
    cache = None if cache_dir is None else os.fspath(cache_dir)
    if task is not None:
        if files:
            given = ", ".join(f"{split}_file={path}" for split, path in files.items())
            raise ValueError(f"pass either a GLUE task or local data files, not both: got task={task!r} and {given}")
        fixed = {name: value for name, value in (("text_columns", text_columns), ("label_names", label_names))
                 if value is not None}
        if label_column != "label":
            fixed["label_column"] = label_column
        if fixed:
            raise ValueError(f"the GLUE task {task!r} fixes its text columns, label column and labels; "
                             f"{', '.join(sorted(fixed))} can only be given with local files")
        return _load_glue(task, cache)
    if not files:
        raise ValueError("no data given: pass a GLUE task (one of " + ", ".join(GLUE_TASKS) + ") or local files "
                         "with --train-file/--validation-file (and --test-file)")
    return _load_files(files, text_columns, label_column, label_names, cache)


def tokenize(data: TextClassificationData, tokenizer: Any, max_length: int = 128) -> "datasets.DatasetDict":
    """Tokenize every split of ``data`` for a sequence-classification model: the text column(s) (a pair as the
    tokenizer's two segments) become ``input_ids``, ``attention_mask`` and, where the tokenizer makes them,
    ``token_type_ids``, truncated to ``max_length`` tokens (specials included; a pair is trimmed longest first);
    ``label`` becomes ``labels``. Nothing is padded: the Trainer's collator pads each batch to its longest row.
    Every other column (the texts, a GLUE ``idx``, extra file columns) is dropped, and row order is kept, so
    predictions line up with ``data.datasets[split]``. An unlabeled split has no ``labels``.
    """
    import datasets

    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    columns = list(data.text_columns)

    def encode(batch: Dict[str, List[Any]]) -> Dict[str, Any]:
        return tokenizer(*(batch[column] for column in columns), truncation=True, max_length=max_length)

    tokenized = {}
    for split, dataset in data.datasets.items():
        drop = [column for column in dataset.column_names if column != "label"]
        encoded = dataset.map(encode, batched=True, remove_columns=drop, desc=f"Tokenizing {split}")
        if "label" in encoded.column_names:
            encoded = encoded.rename_column("label", "labels")
        tokenized[split] = encoded
    return datasets.DatasetDict(tokenized)


def majority_fraction(dataset: "datasets.Dataset") -> float:
    """The share of the most frequent label in ``dataset`` (its ``label`` or ``labels`` column): the accuracy of
    always predicting the majority class. A dev accuracy that collapses to this value is the usual sign of a
    diverged fine-tuning run (the model predicts one class for everything)."""
    column = next((name for name in ("label", "labels") if name in dataset.column_names), None)
    if column is None:
        raise ValueError(f"majority_fraction: the dataset has no 'label' or 'labels' column (it is unlabeled?); "
                         f"its columns: {dataset.column_names}")
    labels = _values(dataset, column)
    if len(labels) == 0:
        raise ValueError("majority_fraction: the dataset has no rows")
    return Counter(labels).most_common(1)[0][1] / len(labels)


def _values(dataset: "datasets.Dataset", column: str) -> List[Any]:
    """One column as a Python list, whatever the dataset's format: ``dataset[column]`` is a lazy ``Column`` in
    recent ``datasets`` whose iteration goes row by row (seconds for a GLUE-sized set)."""
    return dataset.select_columns([column]).with_format(None)[:][column]


# --------------------------------------------------------------------------------------------------- GLUE


def _load_glue(task: str, cache_dir: Optional[str]) -> TextClassificationData:
    """A GLUE task from the Hub (or datasets' cache), its splits renamed to train / validation / test."""
    import datasets

    if not isinstance(task, str):
        raise ValueError(f"task must be a GLUE task name (a str), got {task!r}")
    name = task.strip().lower()
    if name.startswith("glue/"):
        name = name[len("glue/"):]
    name = name.replace("-", "")
    if name in GLUE_REGRESSION_TASKS:
        raise ValueError(f"GLUE task {task!r} is not supported: {GLUE_REGRESSION_TASKS[name]}; bermo's "
                         f"text-classification data supports {', '.join(GLUE_TASKS)}")
    if name not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; known tasks: {', '.join(GLUE_TASKS)} "
                         "(or pass local files with --train-file/--validation-file)")
    spec = GLUE_TASKS[name]
    try:
        raw = datasets.load_dataset(GLUE_DATASET, name, cache_dir=cache_dir)
    except Exception as exc:
        if not _is_hub_unreachable(exc):
            raise
        where = cache_dir if cache_dir is not None else "the default datasets cache"
        raise ConnectionError(
            f"cannot load GLUE task {name!r}: the Hugging Face Hub cannot be reached and {GLUE_DATASET} "
            f"({name}) is not in {where} ({type(exc).__name__}: {exc}). Pass local files instead with "
            "--train-file/--validation-file (TSV, CSV or JSON lines, e.g. GLUE's own TSV files), or load the task "
            "once with network access to fill the cache") from exc

    splits: Dict[str, "datasets.Dataset"] = {}
    for ours, theirs in (("train", "train"), ("validation", spec.validation_split), ("test", spec.test_split)):
        if theirs in raw:
            dataset = raw[theirs]
            if spec.label_column != "label":
                dataset = dataset.rename_column(spec.label_column, "label")
            if ours == "test" and set(_values(dataset, "label")) <= {-1}:  # GLUE's hidden test labels
                dataset = dataset.remove_columns("label")
            splits[ours] = dataset
    labeled = next(dataset for dataset in splits.values() if "label" in dataset.column_names)
    feature = labeled.features["label"]
    label_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else \
        [str(i) for i in range(spec.num_labels)]
    if len(label_names) != spec.num_labels:
        raise ValueError(f"{GLUE_DATASET} ({name}) has {len(label_names)} labels {label_names}; "
                         f"expected {spec.num_labels}")
    return TextClassificationData(datasets.DatasetDict(splits), spec.text_columns, spec.num_labels, label_names,
                                  f"glue/{name}")


def _is_hub_unreachable(exc: BaseException) -> bool:
    """Whether a load_dataset failure means the Hub could not be reached (offline mode, no network, a timeout):
    a connection or timeout error anywhere in its chain of causes."""
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError)) or type(current).__name__ in _NETWORK_ERROR_NAMES:
            return True
        current = current.__cause__ or current.__context__
    return False


# --------------------------------------------------------------------------------------------------- local files


def _load_files(files: Dict[str, str], text_columns: Optional[Union[str, Sequence[str]]], label_column: str,
                label_names: Optional[Sequence[str]], cache_dir: Optional[str]) -> TextClassificationData:
    """Local files: read (every value a string for TSV/CSV), check the columns and texts, map the labels."""
    import datasets

    fmt = _check_files(files)
    loaded = {split: _read_file(split, path, fmt, cache_dir) for split, path in files.items()}
    first = next(iter(files))
    columns = _resolve_text_columns(text_columns, loaded[first].column_names, first, files[first])
    if not isinstance(label_column, str) or not label_column:
        raise ValueError(f"label_column must be a column name, got {label_column!r}")
    if label_column in columns:
        raise ValueError(f"label column {label_column!r} is also a text column {columns}")

    labels: Dict[str, List[str]] = {}  # split -> labels as strings, for the labeled splits
    for split, dataset in loaded.items():
        path = files[split]
        if dataset.num_rows == 0:
            raise ValueError(f"{split} file {path} has no data rows (columns {dataset.column_names})")
        for column in columns:
            if column not in dataset.column_names:
                raise ValueError(f"text column {column!r} not found in {split} file {path}; its columns: "
                                 f"{dataset.column_names}")
        if label_column not in dataset.column_names:
            if split == "test":
                continue  # a test file without labels: prediction only
            raise ValueError(f"label column {label_column!r} not found in {split} file {path}; its columns: "
                             f"{dataset.column_names} (name it with --label-column)")
        if label_column != "label" and "label" in dataset.column_names:
            raise ValueError(f"{split} file {path} has a column 'label' besides the label column "
                             f"{label_column!r}; rename or remove one of them")
        values = [_label_str(value) for value in _values(dataset, label_column)]
        empty = [i for i, value in enumerate(values) if value == ""]
        if split == "test" and len(empty) == len(values):
            loaded[split] = dataset.remove_columns(label_column)  # an all-empty label column: unlabeled too
            continue
        if empty:
            raise ValueError(f"{split} file {path}: {len(empty)} empty label(s) in column {label_column!r}, the "
                             f"first at {_where(fmt, empty[0])}")
        labels[split] = values

    for split, dataset in loaded.items():
        loaded[split] = dataset = _texts_as_strings(dataset, columns, split, files[split])
        for column in columns:
            empty = [i for i, text in enumerate(_values(dataset, column)) if text is None or not text.strip()]
            if empty:
                raise ValueError(f"{split} file {files[split]}: {len(empty)} empty text(s) in column {column!r}, "
                                 f"the first at {_where(fmt, empty[0])}")

    if labels:
        names, to_id = _label_mapping(labels, files, fmt, label_names)
    elif label_names is not None:  # only an unlabeled test file: the names still describe the model's classes
        names, to_id = _check_label_names(label_names), {}
    else:
        raise ValueError(f"no labels in {', '.join(files.values())}: a test file alone has no labels to learn the "
                         f"classes from; pass label_names (bermo eval takes them from the trained model) or a "
                         f"training/validation file")

    label_feature = datasets.ClassLabel(names=names)
    for split, values in labels.items():
        dataset = loaded[split].remove_columns(label_column)
        loaded[split] = dataset.add_column("label", [to_id[value] for value in values], feature=label_feature)
    source = ", ".join(f"{split}={path}" for split, path in files.items())
    return TextClassificationData(datasets.DatasetDict(loaded), columns, len(names), names, source)


def _check_files(files: Dict[str, str]) -> str:
    """The files' common format; a missing file, an unknown extension or mixed formats are errors."""
    formats = {}
    for split, path in files.items():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{split} file not found: {path}" +
                                    (" (it is a directory)" if os.path.isdir(path) else ""))
        extension = os.path.splitext(path)[1].lower()
        if extension not in _FORMATS:
            raise ValueError(f"{split} file {path}: unsupported extension {extension!r}; use {_FORMAT_HELP}")
        formats[split] = _FORMATS[extension]
    if len(set(formats.values())) > 1:
        found = ", ".join(f"{split}={files[split]} ({fmt})" for split, fmt in formats.items())
        raise ValueError(f"all data files must share one format (they are read alike): got {found}")
    return next(iter(formats.values()))


def _read_file(split: str, path: str, fmt: str, cache_dir: Optional[str]) -> "datasets.Dataset":
    """One file through datasets' csv or json builder, as one split."""
    import datasets

    if os.path.getsize(path) == 0:
        raise ValueError(f"{split} file {path} is empty" +
                         (f": a {fmt.upper()} file needs a header line naming its columns" if fmt != "json" else ""))
    kwargs: Dict[str, Any] = {}
    if fmt in ("tsv", "csv"):
        header = _check_header(split, path, fmt)
        # every column a string: a text "123" or "NA" stays text, labels are interpreted by _label_mapping, and no
        # chunk of a big file infers a type the next chunk contradicts
        kwargs = dict(features=datasets.Features({name: datasets.Value("string") for name in header}),
                      keep_default_na=False, na_filter=False)
        if fmt == "tsv":  # GLUE style: no quoting, a quote is literal text
            kwargs.update(sep="\t", quoting=csv.QUOTE_NONE)
    builder = "json" if fmt == "json" else "csv"
    try:
        # datasets keys its cache on the path and mtime only; the content hash in the config makes an edited file
        # (same size, same second) a new cache entry
        return datasets.load_dataset(builder, data_files={split: path}, split=split, cache_dir=cache_dir,
                                     description=f"bermo content sha256={_content_hash(path)}", **kwargs)
    except (datasets.exceptions.DatasetGenerationError, ValueError, TypeError) as exc:  # pandas, pyarrow, json
        cause = exc.__cause__ or exc.__context__ or exc
        if "corresponds to no data" in str(cause):  # e.g. a JSON file of blank lines
            raise ValueError(f"{split} file {path} has no data rows") from exc
        raise ValueError(f"cannot read {split} file {path} as {fmt.upper()} ({_FORMAT_NOTES[fmt]}): "
                         f"{type(cause).__name__}: {str(cause).strip()}") from exc


def _check_header(split: str, path: str, fmt: str) -> List[str]:
    """The header of a TSV/CSV file, checked: not empty, no duplicate names, and a first row no wider than the
    header (pandas would silently take the extra field as an index and shift the columns)."""
    # The header and the first data row as pandas sees them: past blank lines (which it skips), with their line
    # numbers in the file.
    rows, line_numbers = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            if fmt == "tsv":
                for number, line in enumerate(handle, 1):
                    if "\t" not in line and not line.strip():  # (a line of tabs is a row of empty fields)
                        continue
                    rows.append(line.rstrip("\r\n").split("\t"))
                    line_numbers.append(number)
                    if len(rows) == 2:
                        break
            else:
                reader = csv.reader(handle)
                start = 1
                for row in reader:
                    if row and not (len(row) == 1 and not row[0].strip()):
                        rows.append(row)
                        line_numbers.append(start)  # where the record starts (a quoted text may span lines)
                        if len(rows) == 2:
                            break
                    start = reader.line_num + 1
    except UnicodeDecodeError as exc:
        raise ValueError(f"{split} file {path} is not UTF-8 text: {exc}") from exc
    if not rows or rows[0] == [""]:
        raise ValueError(f"{split} file {path} is empty: a {fmt.upper()} file needs a header line naming its columns")
    header = rows[0]
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates or "" in header:
        raise ValueError(f"{split} file {path}: the header line {header} has "
                         + (f"duplicate column names {duplicates}" if duplicates else "an empty column name"))
    if len(rows) < 2:  # datasets would only say 'Instruction "train" corresponds to no data!'
        raise ValueError(f"{split} file {path} has no data rows (columns {header})")
    if len(rows[1]) > len(header):
        hint = " (a tab inside a text? TSV files are not quoted)" if fmt == "tsv" else ""
        raise ValueError(f"{split} file {path}: line {line_numbers[1]} has {len(rows[1])} fields but the header has "
                         f"{len(header)} {header}{hint}")
    return header


def _content_hash(path: str) -> str:
    """sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _resolve_text_columns(text_columns: Optional[Union[str, Sequence[str]]], available: List[str], split: str,
                          path: str) -> Tuple[str, ...]:
    """The given text columns (one or two; "a,b" accepted), or the first known single/pair found in the file."""
    if text_columns is not None:
        columns = tuple(part.strip() for part in text_columns.split(",")) if isinstance(text_columns, str) \
            else tuple(text_columns)
        if len(columns) not in (1, 2) or not all(isinstance(c, str) and c for c in columns) \
                or len(set(columns)) != len(columns):
            raise ValueError(f"text_columns must be one column name or two different ones (a sentence pair), got "
                             f"{text_columns!r}")
        return columns
    for pair in PAIR_TEXT_COLUMNS:
        if all(column in available for column in pair):
            return pair
    for column in SINGLE_TEXT_COLUMNS:
        if column in available:
            return (column,)
    known = [",".join(pair) for pair in PAIR_TEXT_COLUMNS] + list(SINGLE_TEXT_COLUMNS)
    raise ValueError(f"cannot infer the text columns of {split} file {path}: it has none of {known}; its columns: "
                     f"{available}. Name them with --text-columns")


def _texts_as_strings(dataset: "datasets.Dataset", columns: Sequence[str], split: str,
                      path: str) -> "datasets.Dataset":
    """JSON texts that are numbers become strings (TSV/CSV are read as strings already; a missing text stays None,
    for the empty-text check); a list or an object is an error."""
    import datasets

    for column in columns:
        feature = dataset.features[column]
        if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
            continue
        texts = []
        for i, value in enumerate(_values(dataset, column)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
                raise ValueError(f"{split} file {path}: text column {column!r} holds {type(value).__name__} "
                                 f"{value!r} at {_where('json', i)}, not a string")
            texts.append(None if value is None else str(value))
        position = dataset.column_names.index(column)
        dataset = dataset.remove_columns(column).add_column(column, texts, feature=datasets.Value("string"))
        dataset = dataset.select_columns(dataset.column_names[:-1][:position] + [column]
                                         + dataset.column_names[:-1][position:])
    return dataset


def _label_str(value: Any) -> str:
    """A label as the string it stands for: "" for a missing one; JSON ints, integral floats and booleans
    normalised ("1" for 1 and 1.0, "true" for true)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:  # NaN: missing
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value).strip()


def _check_label_names(label_names: Sequence[str]) -> List[str]:
    """``label_names`` as a list of distinct, non-empty strings (at least two)."""
    if isinstance(label_names, str):
        raise ValueError(f"label_names must be a sequence of label strings, not the str {label_names!r}")
    names = [_label_str(name) for name in label_names]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if len(names) < 2 or "" in names or duplicates:
        raise ValueError(f"label_names must be at least two distinct, non-empty labels, got {list(label_names)!r}")
    return names


def _label_mapping(labels: Dict[str, List[str]], files: Dict[str, str], fmt: str,
                   label_names: Optional[Sequence[str]]) -> Tuple[List[str], Dict[str, int]]:
    """(label names, {label string: id}) for the labeled splits; every label of every split must be covered."""
    if label_names is not None:
        names = _check_label_names(label_names)
        every = {value for values in labels.values() for value in values}
        if not every & set(names) and all(_INT_LABEL.fullmatch(v) and 0 <= int(v) < len(names) for v in every):
            to_id = {value: int(value) for value in every}  # ids given as integers; label_names names them
            warnings.warn("the labels of " + ", ".join(f"{split} file {files[split]}" for split in labels)
                          + " are integers, none of them a label name: taken as ids, "
                          + ", ".join(f"{i} = {name!r}" for i, name in enumerate(names))
                          + " (name the classes in the file if these ids mean others)", UserWarning, stacklevel=3)
        else:
            to_id = {name: i for i, name in enumerate(names)}
        reference = f"label_names {names}"
    else:
        split = "train" if "train" in labels else next(iter(labels))
        values = set(labels[split])
        if all(_INT_LABEL.fullmatch(value) for value in values):
            spellings = {}
            for value in values:
                spellings.setdefault(int(value), []).append(value)
            clashes = [sorted(v) for _, v in sorted(spellings.items()) if len(v) > 1]
            if clashes:  # one class or several? numbered as strings they were silently several
                raise ValueError(f"{split} file {files[split]}: the labels " + "; ".join(
                    " and ".join(repr(v) for v in c) for c in clashes) + " are the same integer written differently: "
                    "write each class one way (label_names can name them as separate classes, if they are)")
            ordered = sorted(values, key=lambda value: (int(value), value))
            if sorted({int(value) for value in values}) == list(range(len(values))):
                to_id = {value: int(value) for value in values}
                names = [str(i) for i in range(len(values))]
                # the strings as they appeared ("0", not a normalised "+0")
                for value in values:
                    names[int(value)] = value
            else:
                names = ordered
                to_id = {value: i for i, value in enumerate(names)}
        else:
            names = sorted(values)
            to_id = {value: i for i, value in enumerate(names)}
        if len(names) < 2:
            raise ValueError(f"{split} file {files[split]} has a single label {names}: a classifier needs at least "
                             f"two classes (pass label_names to name them all; bermo eval takes them from the trained "
                             f"model)")
        reference = f"the labels {names} of {split} file {files[split]}"
    for split, values in labels.items():
        for i, value in enumerate(values):
            if value not in to_id:
                raise ValueError(f"{split} file {files[split]}: label {value!r} at {_where(fmt, i)} is not among "
                                 f"{reference}")
    return names, to_id


def _where(fmt: str, index: int) -> str:
    """A data row (0-based ``index``) in words: TSV/CSV rows with their line number (counting the header, and
    exact unless the file has blank lines or, in CSV, quoted line breaks), JSON lines as records."""
    if fmt == "json":
        return f"record {index + 1}"
    return f"row {index + 1} (line {index + 2})"
