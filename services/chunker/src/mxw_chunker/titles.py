"""Chunk titles and keywords from the chunk's own phrases, ranked by embedding similarity
(KeyBERT-style), without an LLM and without a POS tagger (docs/chunking.md says why).

Candidates are the runs of words between stopwords and punctuation (RAKE's candidates), and
the n-grams inside them, so a phrase never starts or ends with a stopword; a run may span one
"of"/"and" between content words ("price of salt"). They keep the speaker's word order, and
each word the case it is most often written with inside a sentence (a capital that only
starts sentences is dropped, "Roman" keeps its own). Each candidate is embedded with the
chunk's embedding model and compared with the chunk's vector (the mean of its ~80-word
pieces): the title is the best one, with a small bonus per extra word (informative phrases
over single words); the keywords are chosen by maximal marginal relevance (relevant and
not alike). Pure functions; the only model is the `embed` passed in.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
EmbedFn = Callable[[Sequence[str]], Vectors]

# English function words, and what speech adds: fillers, hedges, light verbs and vague nouns
# (a title is a noun phrase: without a tagger these keep verbs and fillers off the edges).
_STOPWORD_TEXT = """
a about above across after again against ago all almost along already also although always
am among an and another any anybody anyone anything anyway anywhere are aren't around as at
away back be became because become becomes been before being below beside besides best
better between beyond both but by can can't cannot could couldn't did didn't do does doesn't
doing don't done down during each either else enough even ever every everybody everyone
everything everywhere except few first for from further had hadn't has hasn't have haven't
having he he'd he'll he's her here here's hers herself him himself his how how's however i
i'd i'll i'm i've if in inside instead into is isn't it it's its itself just last least less
let let's lot lots many may maybe me might mine more most much must mustn't my myself near
need needs neither never next no nobody none nor not nothing now nowhere of off often on once
one ones only onto or other others otherwise ought our ours ourselves out over own per quite
rather really same several shall shan't she she'd she'll she's should shouldn't since so some
somebody someone something sometimes somewhere soon still such than that that's the their
theirs them themselves then there there's therefore these they they'd they'll they're they've
this those though through throughout thus to together too toward towards under unless until
up upon us very via was wasn't we we'd we'll we're we've well were weren't what what's
whatever when whenever where where's whereas wherever whether which while who who's whoever
whole whom whose why will with within without won't would wouldn't yet you you'd you'll
you're you've your yours yourself yourselves
um uh uhm erm er hmm mm ah oh okay ok yeah yes yep nope right like actually basically
literally honestly obviously probably definitely certainly totally pretty kind kinda sort
sorta gonna wanna gotta guess mean means meant think thinks thought know knows knew say says
said saying tell told talk talked talking go goes going went gone get gets getting got come
comes coming came make makes making made take takes took taken give gives gave put puts see
sees saw seen look looks looking looked want wants wanted try tries tried use uses used
start started keep keeps kept let's seem seems feel feels felt call called thing things
stuff way ways bit guys guy people person everybody anyway whatever etc exactly sure fine
great good bad big small little new old different important able also usually mostly
simply fairly suddenly day days week weeks year years time times
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
CONNECTORS = frozenset({"of", "and"})  # allowed inside a phrase, never at its ends

_TOKEN = re.compile(r"[^\W_](?:[\w'’\-]*[^\W_])?|[^\w\s]", re.UNICODE)
_SENTENCE_END = frozenset(".!?…")
MAX_WORDS = 3  # content words in one candidate
MAX_CANDIDATES = 48  # per chunk, the most frequent, embedded (bounds the cost per chunk)
PIECE_WORDS = 80  # words per piece the chunk is embedded in (the model reads 128 word pieces)
WORD_BONUS = 0.03  # added to a title candidate's similarity per content word past the first
DIVERSITY = 0.5  # keywords' MMR: weight of being unlike those already chosen


@dataclass(frozen=True)
class Candidate:
    text: str  # the phrase as the speaker said it (natural order, usual case)
    count: int  # occurrences in the chunk
    words: int  # content words
    first: int  # token position of its first occurrence


def _norm(word: str) -> str:
    return word.lower().replace("’", "'")


def _is_stop(word: str) -> bool:
    w = _norm(word)
    return w in STOPWORDS or not any(c.isalpha() for c in w) or len(w) < 2


def _word_cases(tokens: Sequence[str]) -> dict[str, str]:
    """Each word's usual written form: the most frequent inside a sentence (a first word's
    capital says nothing); a word only ever seen first in a sentence is lower-cased, unless
    all of it is upper case (an acronym)."""
    inside: dict[str, Counter[str]] = {}
    starts: dict[str, str] = {}
    sentence_start = True
    for token in tokens:
        if token in _SENTENCE_END:
            sentence_start = True
            continue
        if not token[0].isalnum():
            continue
        key = _norm(token)
        if sentence_start:
            starts.setdefault(key, token)
        else:
            inside.setdefault(key, Counter())[token] += 1
        sentence_start = False
    cases = {}
    for key, form in starts.items():
        cases[key] = form if form.isupper() and len(form) > 1 else key
    for key, forms in inside.items():
        # Most frequent; a tie goes to the form seen first.
        cases[key] = max(forms, key=lambda f: forms[f])
    return cases


def candidates(text: str, max_words: int = MAX_WORDS) -> list[Candidate]:
    """The chunk's candidate phrases, most frequent first (ties: first said first)."""
    tokens = _TOKEN.findall(text)
    cases = _word_cases(tokens)
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    sizes: dict[str, int] = {}
    surface: dict[str, str] = {}
    for start, token in enumerate(tokens):
        if _is_stop(token):
            continue
        words = 0
        for end in range(start, len(tokens)):
            tok = tokens[end]
            if not tok[0].isalnum():
                break
            if _is_stop(tok):
                # A connector may join two content words; nothing else may.
                if _norm(tok) not in CONNECTORS or _norm(tokens[end - 1]) in CONNECTORS:
                    break
                continue
            words += 1
            if words > max_words:
                break
            span = tokens[start : end + 1]
            key = " ".join(_norm(t) for t in span)
            counts[key] += 1
            if key not in first:
                first[key] = start
                sizes[key] = words
                surface[key] = " ".join(cases.get(_norm(t), t) for t in span)
    ordered = sorted(counts, key=lambda k: (-counts[k], first[k]))
    return [Candidate(surface[k], counts[k], sizes[k], first[k]) for k in ordered]


def pieces(text: str, words: int = PIECE_WORDS) -> list[str]:
    split = text.split()
    return [" ".join(split[i : i + words]) for i in range(0, len(split), words)]


def _unit(vectors: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    norms[norms == 0] = 1.0
    result: npt.NDArray[np.float64] = v / norms
    return result


def shortlist(found: Sequence[Candidate], limit: int = MAX_CANDIDATES) -> list[Candidate]:
    """At most `limit` candidates to embed: the most frequent, and among equals those made of
    the chunk's most frequent words (a phrase said once around a recurring word still
    competes)."""
    if len(found) <= limit:
        return list(found)
    word_counts: Counter[str] = Counter()
    for c in found:
        if c.words == 1:
            word_counts[_norm(c.text)] += c.count

    def weight(c: Candidate) -> float:
        words = [w for w in (_norm(t) for t in c.text.split()) if w not in CONNECTORS]
        return c.count + sum(word_counts[w] for w in words) / max(len(words), 1)

    return sorted(found, key=lambda c: (-weight(c), c.first))[:limit]


def title_score(
    similarity: npt.NDArray[np.float64], words: Sequence[int]
) -> npt.NDArray[np.float64]:
    bonus = WORD_BONUS * (np.minimum(np.asarray(words), MAX_WORDS) - 1)
    result: npt.NDArray[np.float64] = similarity + bonus
    return result


def mmr(
    similarity: npt.NDArray[np.float64],
    vectors: npt.NDArray[np.float64],
    top: int,
    diversity: float = DIVERSITY,
    first: int | None = None,
) -> list[int]:
    """Maximal marginal relevance: positions of `top` candidates, each the most similar to the
    chunk less `diversity` × its similarity to the closest already chosen (`first` is chosen
    first when given)."""
    n = len(similarity)
    if n == 0 or top <= 0:
        return []
    chosen = [int(np.argmax(similarity)) if first is None else first]
    pairwise = vectors @ vectors.T
    while len(chosen) < min(top, n):
        closest = pairwise[:, chosen].max(axis=1)
        score = (1 - diversity) * similarity - diversity * closest
        score[chosen] = -np.inf
        chosen.append(int(np.argmax(score)))
    return chosen


def capitalised(phrase: str) -> str:
    return phrase[:1].upper() + phrase[1:]


@dataclass(frozen=True)
class Titled:
    title: str | None
    keywords: tuple[str, ...]


def title_and_keywords(text: str, embed: EmbedFn, top: int = 5) -> Titled:
    """The chunk's title (its most representative phrase, capitalised) and `top` keywords
    (the title's phrase first). Two calls of `embed`: the chunk's pieces and the shortlist."""
    found = shortlist(candidates(text))
    if not found:
        return Titled(None, ())
    chunk = _unit(_unit(embed(pieces(text))).mean(axis=0))
    vectors = _unit(embed([c.text for c in found]))
    similarity = vectors @ chunk
    best = int(np.argmax(title_score(similarity, [c.words for c in found])))
    order = mmr(similarity, vectors, top, first=best)
    return Titled(capitalised(found[best].text), tuple(found[i].text for i in order))


# ---- agreement with a person's title (bench/titles_bench.py, tests/test_titles.py) ----


def _stem(word: str) -> str:
    word = _norm(word).removesuffix("'s")
    for suffix in ("ing", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def title_words(title: str) -> set[str]:
    """A title's content words, crudely stemmed ("tyres" and "tyre" agree)."""
    words = (t for t in _TOKEN.findall(title) if t[0].isalnum())
    return {_stem(w) for w in words if _norm(w) not in STOPWORDS or _norm(w) == "first"}


def word_f1(produced: str | None, reference: str) -> float:
    """F1 of the content words of a produced title against a person's."""
    ours, theirs = title_words(produced or ""), title_words(reference)
    common = len(ours & theirs)
    if not common:
        return 0.0
    precision, recall = common / len(ours), common / len(theirs)
    return 2 * precision * recall / (precision + recall)


def title_similarity(
    produced: Sequence[str | None], reference: Sequence[str], embed: EmbedFn
) -> list[float]:
    """Cosine similarity of each produced title to the person's (0 for no title)."""
    ours = _unit(embed([p or "" for p in produced]))
    theirs = _unit(embed(list(reference)))
    return [float(a @ b) if p else 0.0 for a, b, p in zip(ours, theirs, produced, strict=True)]
