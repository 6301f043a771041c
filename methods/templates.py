"""Rephrasings and chat questions for an edit, without a dataset.

An edit's prompt is matched against the wordings CounterFact uses for its relations (ParaRel's
templates: the wordings of CounterFact's prompts, counted in its train and validation files,
cover 95% of them; the rest, such as "{}, the", are ambiguous), plus a few relations chat users
edit often (founders, authors, CEOs, designers, directors, spouses). A recognised relation gives other wordings of the same
fact, as continuation prompts the target completes ("Where is {}? It is located in") and as
questions a chat model answers ("Where is {}?"). An unrecognised prompt falls back to generic
rewordings of the prompt itself.

Subjects are inserted verbatim. An article written before the subject's slot ("The {} is
located in", with subject "Eiffel Tower") stays with the subject, lower-cased inside a
sentence: "Where is the Eiffel Tower?".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from methods.requests import EditRequest


@dataclass(frozen=True)
class Relation:
    """One relation: how prompts phrase it, and the wordings used to test it.

    `patterns` are prompt templates that express the relation, matched after normalisation (case,
    spacing, an article before "{}", trailing punctuation); the first is the canonical wording.
    `rephrasings` are continuation prompts the object completes, at least one in question form;
    `questions` are chat questions the object answers. All use "{}" once for the subject.
    """

    name: str
    patterns: tuple[str, ...]
    rephrasings: tuple[str, ...]
    questions: tuple[str, ...]


def _relation(name: str, patterns: list[str], rephrasings: list[str], questions: list[str]) -> Relation:
    return Relation(name, tuple(patterns), tuple(rephrasings), tuple(questions))


# Ordered as in CounterFact's frequency of prompts (most frequent relation wordings first); the
# location relation takes the ambiguous "is in" wordings, whose objects range from cities to
# continents, so its rephrasings stay neutral about the kind of place.
RELATIONS: tuple[Relation, ...] = (
    _relation(
        "location",
        ["{} is located in", "{} is in", "{}, in", "{}, located in", "{}, which is located in",
         "{} can be found in", "{} is within", "The location of {} is", "Where is {}? It is located in",
         "Where is {}?", "Where is {} located?"],
        ["{} is located in", "Where is {}? It is located in", "{} can be found in",
         "{}, which is located in", "The location of {} is"],
        ["Where is {}?", "Where is {} located?"],
    ),
    _relation(
        "country",
        ["{} is located in the country of", "Which country is {} in?", "In which country is {}?"],
        ["{} is located in the country of", "In which country is {}? It is in",
         "The country where {} is located is", "{} is located in"],
        ["Which country is {} in?", "In which country is {} located?"],
    ),
    _relation(
        "continent",
        ["{} belongs to the continent of", "{} is located in the continent", "{} is located in the continent of",
         "{} is a part of the continent of", "{} is part of the continent of", "{} is on the continent of",
         "Which continent is {} on?"],
        ["{} belongs to the continent of", "On which continent is {}? It is in",
         "{} is a part of the continent of", "{} is located in the continent of"],
        ["Which continent is {} on?", "On which continent is {} located?"],
    ),
    _relation(
        "capital",
        ["The capital of {} is", "The capital city of {} is", "{}'s capital is", "{}'s capital city is",
         "{}'s capital", "{}'s capital city", "{}, which has the capital", "{}, which has the capital city",
         "What is the capital of {}?"],
        ["The capital of {} is", "What is the capital of {}? It is", "{}'s capital city is",
         "The capital city of {} is", "{}, which has the capital"],
        ["What is the capital of {}?", "Which city is the capital of {}?"],
    ),
    _relation(
        "official language",
        ["The official language of {} is", "In {}, an official language is", "The law in {} declares the language",
         "In {}, the language spoken is", "In {}, they understand", "What is the official language of {}?"],
        ["The official language of {} is", "What is the official language of {}? It is",
         "In {}, an official language is", "The law in {} declares the language", "In {}, the language spoken is"],
        ["What is the official language of {}?", "Which language is spoken in {}?"],
    ),
    _relation(
        "native language",
        ["The mother tongue of {} is", "The native language of {} is", "{} is a native speaker of",
         "{}, a native", "{}, speaker of", "{} spoke the language", "What is the mother tongue of {}?"],
        ["The mother tongue of {} is", "What is the native language of {}? It is",
         "{} is a native speaker of", "The native language of {} is"],
        ["What is the mother tongue of {}?", "What is the native language of {}?"],
    ),
    _relation(
        "language spoken",
        ["{} speaks the language", "{} speaks", "{} writes in", "The language used by {} is",
         "Which language does {} speak?"],
        ["{} speaks the language", "Which language does {} speak? They speak", "The language used by {} is",
         "{} writes in"],
        ["Which language does {} speak?", "In which language does {} write?"],
    ),
    _relation(
        "language of work",
        ["The original language of {} is", "The original language of {} was", "The language of {} is",
         "The language of {} was", "{} is written in", "{} was written in", "What language is {} in?"],
        ["The original language of {} is", "What is the original language of {}? It is", "The language of {} is",
         "{} was written in"],
        ["What is the original language of {}?", "In which language was {} written?"],
    ),
    _relation(
        "citizenship",
        ["{} is a citizen of", "{}, a citizen of", "{}, who is a citizen of", "{} has a citizenship from",
         "{} holds a citizenship from", "{}, who has a citizenship from", "{}, who holds a citizenship from",
         "{} has citizenship of"],
        ["{} is a citizen of", "Which country is {} a citizen of? They are a citizen of",
         "{} holds a citizenship from", "{}, who has a citizenship from"],
        ["Which country is {} a citizen of?", "What country does {} hold citizenship in?"],
    ),
    _relation(
        "birthplace",
        ["{} was born in", "{} is originally from", "{} was originally from", "{} is native to",
         "{} was native to", "{} originates from", "{} originated from", "Where was {} born?",
         "The birthplace of {} is", "{}'s birthplace is"],
        ["{} was born in", "Where was {} born? They were born in", "{} is originally from",
         "The birthplace of {} is"],
        ["Where was {} born?", "What is the birthplace of {}?"],
    ),
    _relation(
        "place of death",
        ["{} died in", "{} died at", "{} died in the city of", "{} passed away in", "{} passed away at",
         "{} expired at", "{} lost their life at", "{} succumbed at", "{}'s life ended in", "Where did {} die?"],
        ["{} died in", "Where did {} die? They died in", "{} passed away in", "{}'s life ended in"],
        ["Where did {} die?", "In which city did {} die?"],
    ),
    _relation(
        "work location",
        ["{} worked in", "{} worked in the city of", "{} used to work in", "{} took up work in",
         "{} found employment in", "{} was employed in", "Where did {} work?"],
        ["{} worked in the city of", "Where did {} work? They worked in", "{} used to work in",
         "{} found employment in"],
        ["In which city did {} work?", "Where did {} work?"],
    ),
    _relation(
        "field of work",
        ["{} works in the field of", "{} works in the area of", "{} specializes in", "{} specialises in",
         "The domain of activity of {} is", "The domain of work of {} is", "The expertise of {} is",
         "{}'s area of work is", "{}'s domain of activity is", "{}'s domain of work is", "{}'s expertise is",
         "What field does {} work in?"],
        ["{} works in the field of", "What field does {} work in? They work in the field of",
         "{} specializes in", "The expertise of {} is"],
        ["What field does {} work in?", "What is {}'s area of expertise?"],
    ),
    _relation(
        "occupation",
        ["The occupation of {} is", "The profession of {} is", "{}'s occupation is", "{}'s profession is",
         "{}'s profession is a", "{}'s profession is an", "{} works as", "{} works as a", "{} works as an",
         "{}, who works as", "What is the occupation of {}?", "What does {} do for a living?"],
        ["The occupation of {} is", "What is the profession of {}? Their profession is", "{} works as",
         "{}'s profession is"],
        ["What is the occupation of {}?", "What does {} do for a living?"],
    ),
    _relation(
        "employer",
        ["{} works for", "{} is employed by", "{}, who works for", "{}, who is employed by", "{} worked for",
         "{} was employed by", "Who does {} work for?"],
        ["{} works for", "Who does {} work for? They work for", "{} is employed by", "{}, who is employed by"],
        ["Who does {} work for?", "Which organization employs {}?"],
    ),
    _relation(
        "position held",
        ["{} holds the position of", "{} has the position of", "{}'s position is", "{}'s position is that of",
         "{}, who holds the position of", "{}, who has the position of", "{}, whose position is that of",
         "{} holds the title of", "What position does {} hold?"],
        ["{} holds the position of", "What position does {} hold? They hold the position of",
         "{} holds the title of", "{}, whose position is that of"],
        ["What position does {} hold?", "What is the title of {}?"],
    ),
    _relation(
        "position played",
        ["{} plays in the position of", "{}, who plays the position", "{} plays as", "{} plays as a",
         "Which position does {} play? They play as", "Which position does {} play?"],
        ["{} plays in the position of", "Which position does {} play? They play as", "{} plays as",
         "{}, who plays the position"],
        ["Which position does {} play?", "What position does {} play on the team?"],
    ),
    _relation(
        "sport",
        ["{} professionally plays the sport", "{} is a professional", "What sport does {} play? They play",
         "{} plays the sport of", "What sport does {} play?"],
        ["{} professionally plays the sport", "What sport does {} play? They play", "{} is a professional",
         "{} plays the sport of"],
        ["What sport does {} play?", "Which sport is {} known for?"],
    ),
    _relation(
        "instrument",
        ["{} plays the instrument", "{} plays the", "{}, performing on the", "{} performs on the",
         "{}, playing the", "What instrument does {} play?"],
        ["{} plays the instrument", "What instrument does {} play? They play the", "{} performs on the",
         "{}, playing the"],
        ["What instrument does {} play?", "Which instrument is {} known for playing?"],
    ),
    _relation(
        "genre",
        ["The genre played by {} is", "{} is known for performing", "{} performs", "{}, who plays",
         "What does {} play? They play", "What genre does {} play?"],
        ["The genre played by {} is", "What genre does {} play? They play", "{} is known for performing",
         "What does {} play? They play"],
        ["What genre does {} play?", "What kind of music or work is {} known for?"],
    ),
    _relation(
        "owner",
        ["{} is owned by", "{} was owned by", "{} owner", "{}'s owner", "{}'s owner is", "The owner of {} is",
         "Who owns {}?"],
        ["{} is owned by", "Who owns {}? It is owned by", "The owner of {} is", "{}'s owner is"],
        ["Who owns {}?", "Which company owns {}?"],
    ),
    _relation(
        "manufacturer",
        ["{} is produced by", "{}, produced by", "{} was produced by", "{} is a product of", "{}, a product of",
         "{} was a product of", "{}, a product manufactured by", "{} is manufactured by", "{} is made by",
         "Who makes {}?"],
        ["{} is produced by", "Which company makes {}? It is made by", "{} is a product of",
         "{}, a product manufactured by"],
        ["Who makes {}?", "Which company manufactures {}?"],
    ),
    _relation(
        "developer",
        ["{} is developed by", "{} was developed by", "{}, developed by", "{}, a product developed by",
         "Who developed {}?"],
        ["{} was developed by", "Who developed {}? It was developed by", "{}, a product developed by",
         "The developer of {} is"],
        ["Who developed {}?", "Which company developed {}?"],
    ),
    _relation(
        "creator",
        ["{} was created by", "{} is created by", "{}, created by", "{}, a product created by",
         "The creator of {} is", "{} was invented by", "Who created {}?"],
        ["{} was created by", "Who created {}? It was created by", "{}, created by", "The creator of {} is"],
        ["Who created {}?", "Who is the creator of {}?"],
    ),
    _relation(
        "original network",
        ["{} premiered on", "{} premieres on", "{} debuted on", "{} is to debut on", "{} was originally aired on",
         "{} originally aired on", "{} was released on", "{} airs on", "On which network did {} first air?"],
        ["{} premiered on", "On which network did {} first air? It first aired on", "{} was originally aired on",
         "{} debuted on"],
        ["On which network did {} originally air?", "Which channel first broadcast {}?"],
    ),
    _relation(
        "headquarters",
        ["{}'s headquarters are in", "{}'s headquarters are located in", "{} is headquartered in",
         "{} is based in", "The headquarter of {} is in", "The headquarter of {} is located in",
         "The headquarters of {} is in", "The headquarters of {} are in", "The headquarters of {} is located in",
         "{}, whose headquarters are in", "Where is {} headquartered?", "Where are {}'s headquarters?"],
        ["{} is headquartered in", "Where is {} headquartered? Its headquarters are in",
         "The headquarters of {} are in", "{}, whose headquarters are in"],
        ["Where is {} headquartered?", "In which city are the headquarters of {}?"],
    ),
    _relation(
        "twin city",
        ["{} is a twin city of", "The twin city of {} is", "What is the twin city of {}? It is",
         "{} is twinned with", "What is the twin city of {}?"],
        ["The twin city of {} is", "What is the twin city of {}? It is", "{} is a twin city of",
         "{} is twinned with"],
        ["What is the twin city of {}?", "Which city is {} twinned with?"],
    ),
    _relation(
        "religion",
        ["{} is affiliated with the religion of", "{} is affiliated with the religion", "{} follows the religion of",
         "{} is follower of", "{} is a follower of", "The official religion of {} is", "{}'s religion is",
         "The religion of {} is", "What religion does {} follow?"],
        ["{} follows the religion of", "What is the religion of {}? It is", "{} is affiliated with the religion of",
         "The religion of {} is"],
        ["What religion does {} follow?", "What is the religion of {}?"],
    ),
    _relation(
        "named after",
        ["{} is named after", "{} was named after", "{} is named for", "{} was named for", "{} is called after",
         "{} was called after", "{}, named after", "{}, named for", "{}, called after", "{}, which is named after",
         "{}, which is named for", "{}, which is called after", "{}, which was named after",
         "{}, which was named for", "{}, which was called after", "What is {} named after?"],
        ["{} is named after", "What is {} named after? It is named after", "{} was named for",
         "{}, which is called after"],
        ["What is {} named after?", "Who or what was {} named for?"],
    ),
    _relation(
        "member of",
        ["{} is a member of", "{} belongs to the organization of", "{} is affiliated with", "{} is affiliated with the",
         "{} is a part of the", "Which organization is {} a member of?"],
        ["{} is a member of", "Which organization is {} a member of? It is a member of",
         "{} belongs to the organization of", "{} is affiliated with"],
        ["Which organization is {} a member of?", "What organization does {} belong to?"],
    ),
    _relation(
        "country of origin",
        ["{} was created in the country of", "{} was created in", "{}, created in", "{}, that was created in",
         "{} was developed in", "{}, developed in", "{}, that was developed in", "{} was formulated in",
         "{}, formulated in", "{}, that was formulated in", "{} originated in", "{}, that originated in",
         "{} was from", "{}, that was from", "Which country does {} come from?"],
        ["{} was created in the country of", "Which country does {} come from? It comes from", "{} originated in",
         "{}, that was developed in"],
        ["Which country does {} come from?", "In which country was {} created?"],
    ),
    _relation(
        "place of formation",
        ["{} was founded in", "{}, founded in", "{} that was founded in", "{}, that was founded in", "{} formed in",
         "{} was formed in", "{}, that was formed in", "{} started in", "{} was started in",
         "{}, that was started in", "Where was {} founded?"],
        ["{} was founded in", "Where was {} founded? It was founded in", "{} was formed in", "{} started in"],
        ["Where was {} founded?", "In which city was {} formed?"],
    ),
    _relation(
        "record label",
        ["{}'s record label is", "{}'s record company is", "{} is represented by record label",
         "{} is represented by music label", "The music label representing {} is",
         "The music label that is representing {} is", "{} recorded for", "{} label", "{} is signed to",
         "{} is represented by", "{}, which is represented by", "{}, that is represented by", "{}, released by",
         "Which record label is {} signed to?"],
        ["{}'s record label is", "Which record label is {} signed to? It is", "{} is represented by record label",
         "The music label representing {} is"],
        ["Which record label is {} signed to?", "What is the record label of {}?"],
    ),
    _relation(
        "founder",
        ["{} was founded by", "The founder of {} is", "{}'s founder is", "{} was established by", "Who founded {}?"],
        ["The founder of {} is", "Who founded {}? It was founded by", "{} was founded by",
         "{} was established by"],
        ["Who founded {}?", "Who is the founder of {}?"],
    ),
    _relation(
        "author",
        ["{} was written by", "The author of {} is", "{} is written by", "{}, written by", "Who wrote {}?"],
        ["{} was written by", "Who wrote {}? It was written by", "The author of {} is", "{}, written by"],
        ["Who wrote {}?", "Who is the author of {}?"],
    ),
    _relation(
        "chief executive",
        ["The CEO of {} is", "{}'s CEO is", "The chief executive of {} is", "{} is led by", "Who is the CEO of {}?"],
        ["The CEO of {} is", "Who is the CEO of {}? It is", "The chief executive of {} is", "{} is led by"],
        ["Who is the CEO of {}?", "Who runs {}?"],
    ),
    _relation(
        "designer",
        ["{} was designed by", "{} is designed by", "The designer of {} is", "The architect of {} is",
         "Who designed {}?"],
        ["{} was designed by", "Who designed {}? It was designed by", "The designer of {} is", "{}, designed by"],
        ["Who designed {}?", "Who is the designer of {}?"],
    ),
    _relation(
        "director",
        ["{} was directed by", "{} is directed by", "The director of {} is", "Who directed {}?"],
        ["{} was directed by", "Who directed {}? It was directed by", "The director of {} is", "{}, directed by"],
        ["Who directed {}?", "Who is the director of {}?"],
    ),
    _relation(
        "spouse",
        ["{} is married to", "{} was married to", "The spouse of {} is", "{}'s spouse is", "{}'s wife is",
         "{}'s husband is", "Who is {} married to?"],
        ["{} is married to", "Who is {} married to? They are married to", "The spouse of {} is",
         "{}'s spouse is"],
        ["Who is {} married to?", "Who is the spouse of {}?"],
    ),
)


_ARTICLE_SLOT = re.compile(r"\b(the|a|an) \{\}", re.IGNORECASE)
# Words that may open a prompt and are lower-cased when a generic prefix is put before it;
# anything else (a name) keeps its capital.
_LOWERABLE = {"the", "a", "an", "in", "on", "at", "what", "which", "who", "where", "when", "how", "this", "it"}


def _normalise(template: str) -> str:
    """The matching key of a template: "The  {}’s capital," -> "{}'s capital"."""
    text = template.replace("\u2019", "'").replace("\u00a0", " ").strip()
    text = re.sub(r"\s+", " ", text)
    text = _ARTICLE_SLOT.sub("{}", text)
    return text.rstrip(" ,:;.").lower()


# A read-only view of the constant table above, keyed for lookup; not a cache (nothing is added later).
_BY_PATTERN: Mapping[str, Relation] = MappingProxyType(
    {_normalise(p): relation for relation in RELATIONS for p in relation.patterns}
)


def relation_of(request: EditRequest) -> Relation | None:
    """The relation whose wording the request's prompt uses, None if it matches none."""
    return _BY_PATTERN.get(_normalise(request.template))


def _subject_phrase(request: EditRequest) -> str:
    """The subject with the article its prompt put before it, lower-cased: "the Eiffel Tower"."""
    match = _ARTICLE_SLOT.search(request.template)
    return f"{match.group(1).lower()} {request.subject}" if match else request.subject


def _fill(template: str, request: EditRequest) -> str:
    """`template` with the subject phrase for "{}"; an article opening the sentence is capitalised
    (the subject itself is never changed)."""
    phrase = _subject_phrase(request)
    text = template.replace("{}", phrase)
    if template.startswith("{}") and phrase != request.subject:
        text = text[0].upper() + text[1:]
    return text


def _generic_rephrasings(request: EditRequest) -> list[str]:
    """Rewordings of the prompt itself, for relations the table does not know."""
    text = request.template.replace("{}", request.subject)
    opens_with_word = not request.template.startswith("{}") and text.split(" ", 1)[0].lower() in _LOWERABLE
    inner = text[0].lower() + text[1:] if opens_with_word else text
    return [
        f"In fact, {inner}",
        f"To be precise, {inner}",
        f"What about {_subject_phrase(request)}? {text}",
        f"As everyone knows, {inner}",
        f"Here is a fact: {text}",
    ]


def paraphrases(request: EditRequest, n: int = 3) -> list[str]:
    """Up to `n` rewordings of the request's prompt, each to be completed by the request's target.

    For a recognised relation they come from its rephrasings (one in question form among the
    first two), skipping any that equal the prompt; when those run out, or the relation is not
    recognised, generic rewordings of the prompt follow ("In fact, ...", "What about X? ...").
    Deterministic; fewer than `n` only if `n` exceeds all available wordings.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    own = _normalise(request.template)
    relation = relation_of(request)
    specific = [t for t in relation.rephrasings if _normalise(t) != own] if relation else []
    candidates = [_fill(t, request) for t in specific] + _generic_rephrasings(request)
    return candidates[:n]


def questions(request: EditRequest) -> list[str]:
    """Chat questions whose answer is the request's target ("Where is the Eiffel Tower?").

    For an unrecognised relation, instructions to complete the prompt instead.
    """
    relation = relation_of(request)
    if relation is not None:
        return [_fill(q, request) for q in relation.questions]
    text = request.template.replace("{}", request.subject)
    return [f'Complete this sentence: "{text} ..."', f"Fill in the blank: {text} ___."]


def neighbors_template(request: EditRequest) -> str | None:
    """The canonical template of the request's relation ("{} is located in"), to ask the same
    question about other subjects; None when the relation is not recognised."""
    relation = relation_of(request)
    return relation.patterns[0] if relation is not None else None
