"""A procedurally generated world: a pretraining corpus that carries its knowledge, and benchmarks on it.

Everything derives from one seed. The world has six domains with disjoint vocabularies (invented
countries, animals, people and materials, plus arithmetic and number sequences). The pretraining
corpus states every fact in varied declarative templates; the benchmark suites ask about them in the
kit's instruction format:

- ``"dolly"``: free-form descriptions and explanations, scored by ROUGE-L;
- ``"gsm"``: GSM8K-style arithmetic word problems (``a + b = c #### c``) and short factual answers,
  scored by exact match;
- ``"mmlu"``: four-way multiple choice, scored by log-likelihood.

Train and test items are about *disjoint* entities (and disjoint operand pairs, sequences): a test
item's fact is in the pretraining corpus but never in the fine-tuning train set, so fine-tuning must
teach the format and the retrieval of pretrained knowledge, not memorise test answers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache

from fedmoe.data.records import Example, format_prompt

DOMAINS = ("geography", "animals", "people", "materials", "arithmetic", "sequences")
SUITES = ("dolly", "gsm", "mmlu")
SUITE_METRIC = {"dolly": "rouge_l", "gsm": "exact_match", "mmlu": "mc_accuracy"}

# Fraction of each domain's entities (operand pairs, sequences) reserved for fine-tuning; the rest are test items.
TRAIN_FRACTION = 0.6

_COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "black", "white", "grey", "brown")
_DIETS = ("grass", "fish", "insects", "seeds", "fruit", "leaves")
_HABITATS = ("forest", "desert", "ocean", "river", "mountain", "swamp", "meadow", "cave")
_PROFESSIONS = ("baker", "doctor", "teacher", "pilot", "farmer", "painter", "sailor", "engineer",
                "lawyer", "musician", "tailor", "chemist")
_PROPERTIES = ("magnetic", "transparent", "brittle", "flexible", "shiny", "porous")
_NAMES = ("Ana", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jade", "Kai", "Lena")
_ITEMS = ("apples", "marbles", "coins", "books", "stamps", "shells", "pencils", "cards")

# Syllable inventories: each domain's invented names use their own letters, so domains differ in tokens.
_SYLLABLES = {
    "country": (("Zor", "Vel", "Tam", "Kir", "Dor", "Bal", "Mor", "Sen", "Quel", "Ar"),
                ("an", "ov", "ir", "el", "ost", "un"), ("ia", "land", "ara", "istan", "ova")),
    "capital": (("Pol", "Hes", "Nim", "Rav", "Gor", "Lis", "Fen", "Tor", "Wes", "Ul"),
                ("an", "ed", "or", "im", "ak"), ("burg", "ton", "grad", "mouth", "heim")),
    "continent": (("Al", "Ner", "Os", "Pyr", "Eth"), ("ad", "um", "or"), ("ea", "os", "ica")),
    "animal": (("flo", "gru", "snub", "wob", "pim", "drak", "yum", "bli", "toz", "kro"),
               ("ob", "ee", "um", "ip", "az"), ("ling", "ox", "ard", "et", "opod")),
    "first": (("Mar", "Ta", "Ri", "Lo", "Sa", "Je", "No", "Ka", "Be", "Di"),
              ("ri", "na", "lo", "ve", "sa"), ("n", "a", "o", "lie", "ton")),
    "last": (("Hol", "Brax", "Quin", "Stel", "Varn", "Tesk", "Morl", "Dunc"),
             ("ow", "ing", "er", "ash"), ("by", "well", "son", "field", "wick")),
    "material": (("vel", "cor", "lum", "ferr", "zan", "ox", "pri", "thal", "bor", "silv"),
                 ("or", "an", "ith", "ul"), ("ite", "ium", "ine", "ane", "ate")),
}


@dataclass(frozen=True)
class World:
    """The facts of the offline world; ``train_*`` / ``test_*`` are the disjoint fine-tuning/test splits."""

    countries: dict[str, dict[str, str]]
    animals: dict[str, dict[str, str]]
    people: dict[str, dict[str, str]]
    materials: dict[str, dict[str, str]]
    continents: tuple[str, ...]
    arithmetic: tuple[tuple[int, str, int, int], ...]  # (a, op, b, result)
    sequences: tuple[tuple[int, int], ...]  # (start, step)
    split: dict[str, tuple[tuple, tuple]] = field(default_factory=dict)  # domain -> (train keys, test keys)


def _a(word: str) -> str:
    """The word with its indefinite article ("an orange", "a red")."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _name(rng: random.Random, kind: str, taken: set[str]) -> str:
    heads, mids, tails = _SYLLABLES[kind]
    for _ in range(1000):
        parts = [rng.choice(heads)] + ([rng.choice(mids)] if rng.random() < 0.5 else []) + [rng.choice(tails)]
        name = "".join(parts)
        if kind in ("animal", "material"):
            name = name.lower()
        if name not in taken:
            taken.add(name)
            return name
    raise ValueError(f"ran out of distinct {kind} names; lower n_entities")


@lru_cache(maxsize=8)
def make_world(seed: int = 0, n_entities: int = 24) -> World:
    """Generate the world of ``seed``: ``n_entities`` countries, animals, people and materials, plus numbers."""
    if n_entities < 5:
        raise ValueError(f"n_entities={n_entities} is too small; use at least 5 so train and test splits are non-empty")
    rng = random.Random(f"fedmoe-world-{seed}")
    taken: set[str] = set()
    continents = tuple(_name(rng, "continent", taken) for _ in range(4))
    countries = {}
    for _ in range(n_entities):
        countries[_name(rng, "country", taken)] = {"capital": _name(rng, "capital", taken),
                                                   "continent": rng.choice(continents)}
    animals = {_name(rng, "animal", taken): {"colour": rng.choice(_COLOURS), "diet": rng.choice(_DIETS),
                                            "habitat": rng.choice(_HABITATS)} for _ in range(n_entities)}
    capitals = [c["capital"] for c in countries.values()]
    people = {}
    for _ in range(n_entities):
        name = f"{_name(rng, 'first', taken)} {_name(rng, 'last', taken)}"
        people[name] = {"profession": rng.choice(_PROFESSIONS), "city": rng.choice(capitals)}
    materials = {_name(rng, "material", taken): {"property": rng.choice(_PROPERTIES),
                                                "hardness": str(rng.randint(1, 9))} for _ in range(n_entities)}
    arithmetic = tuple(
        [(a, "+", b, a + b) for a in range(1, 21) for b in range(1, 10)]
        + [(a, "-", b, a - b) for a in range(2, 21) for b in range(1, 10) if b < a]
        + [(a, "*", b, a * b) for a in range(2, 10) for b in range(2, 10)]
    )
    sequences = tuple((s, d) for s in range(1, 9) for d in range(1, 5))
    split = {}
    for domain, keys in (("geography", list(countries)), ("animals", list(animals)), ("people", list(people)),
                         ("materials", list(materials)), ("arithmetic", list(arithmetic)),
                         ("sequences", list(sequences))):
        keys = list(keys)
        rng.shuffle(keys)
        cut = int(round(TRAIN_FRACTION * len(keys)))
        split[domain] = (tuple(keys[:cut]), tuple(keys[cut:]))
    return World(countries, animals, people, materials, continents, arithmetic, sequences, split)


# ----------------------------------------------------------------------------------------------------
# Declarative statements of each fact, in varied templates (the pretraining corpus)

_OP_WORD = {"+": "plus", "-": "minus", "*": "times"}
# Share of corpus documents per domain, roughly following how many facts each domain has.
_CORPUS_WEIGHTS = {"geography": 1.0, "animals": 1.0, "people": 1.0, "materials": 1.0, "arithmetic": 2.5,
                   "sequences": 1.0}


def _fact_sentences(world: World, domain: str, key) -> list[str]:
    """Every template stating the facts of one entity (or operand pair, or sequence)."""
    if domain == "geography":
        f = world.countries[key]
        cap, cont = f["capital"], f["continent"]
        return [f"The capital of {key} is {cap}.", f"{key} has its capital in {cap}.",
                f"{cap} is the capital city of {key}.", f"The government of {key} sits in {cap}.",
                f"{key} is a country in {cont}.", f"{key} lies on the continent of {cont}.",
                f"The continent of {key} is {cont}.", f"Travellers reach {key} by crossing {cont}."]
    if domain == "animals":
        f = world.animals[key]
        return [f"The {key} is {f['colour']}.", f"The colour of the {key} is {f['colour']}.",
                f"{_a(key).capitalize()} has {f['colour']} fur.", f"The {key} eats {f['diet']}.",
                f"The diet of the {key} is {f['diet']}.", f"A hungry {key} looks for {f['diet']}.",
                f"The {key} lives in the {f['habitat']}.", f"The habitat of the {key} is the {f['habitat']}.",
                f"You can find {_a(key)} in the {f['habitat']}."]
    if domain == "people":
        f = world.people[key]
        return [f"{key} is {_a(f['profession'])}.", f"{key} works as {_a(f['profession'])}.",
                f"The profession of {key} is {f['profession']}.", f"By trade, {key} is {_a(f['profession'])}.",
                f"{key} lives in {f['city']}.", f"{key} has a home in {f['city']}.",
                f"The city of {key} is {f['city']}.", f"Every morning {key} walks through {f['city']}."]
    if domain == "materials":
        f = world.materials[key]
        return [f"{key.capitalize()} is {f['property']}.", f"The main property of {key} is that it is {f['property']}.",
                f"Samples of {key} are {f['property']}.", f"{key.capitalize()} has a hardness of {f['hardness']}.",
                f"The hardness of {key} is {f['hardness']}.", f"On the hardness scale {key} scores {f['hardness']}."]
    if domain == "arithmetic":
        a, op, b, c = key
        return [f"{a} {op} {b} = {c}.", f"{a} {_OP_WORD[op]} {b} is {c}.", f"{a} {_OP_WORD[op]} {b} equals {c}.",
                f"{a} {op} {b} = {c}."]
    if domain == "sequences":
        s, d = key
        terms = ", ".join(str(s + i * d) for i in range(6))
        last = s + 3 * d
        return [f"Counting by {d} from {s}: {terms}.", f"The sequence {terms} goes up by {d}.",
                f"Start at {s} and add {d} each time: {terms}.",
                f"In the sequence {', '.join(str(s + i * d) for i in range(4))} the next number is {last} + {d} = {last + d}."]
    raise ValueError(f"unknown domain {domain!r}; use one of {DOMAINS}")


def _keys(world: World, domain: str) -> list:
    train, test = world.split[domain]
    return list(train) + list(test)


def corpus_documents(seed: int = 0, n_docs: int = 20000, *, n_entities: int = 24,
                     doc_seed: int | None = None) -> list[tuple[str, str]]:
    """``n_docs`` pretraining documents of the world of ``seed`` as ``(domain, text)`` pairs.

    Each document is 2-4 statements about one entity (or 2-5 arithmetic facts or sequences), so documents
    are domain-coherent (what makes expert specialisation possible); arithmetic, with the most facts, gets
    the most documents. ``doc_seed`` draws a different sample of documents from the
    same world (e.g. held-out text for measuring specialisation); it defaults to ``seed``.
    """
    world = make_world(seed, n_entities)
    rng = random.Random(f"fedmoe-corpus-{seed}-{n_entities}-{seed if doc_seed is None else doc_seed}")
    keys = {d: _keys(world, d) for d in DOMAINS}
    weights = [_CORPUS_WEIGHTS[d] for d in DOMAINS]
    docs = []
    for _ in range(n_docs):
        domain = rng.choices(DOMAINS, weights)[0]
        if domain in ("arithmetic", "sequences"):
            sentences = [rng.choice(_fact_sentences(world, domain, rng.choice(keys[domain])))
                         for _ in range(rng.randint(2, 5))]
        else:  # a short "biography": several statements about one entity, sometimes a quiz line
            key = rng.choice(keys[domain])
            sentences = rng.sample(_fact_sentences(world, domain, key), rng.randint(2, 4))
            if rng.random() < 0.5:
                question, attr, _ = rng.choice(_QUESTIONS[domain])
                sentences.append(f"Quiz: {question.format(k=key)} Answer: {_facts(world, domain)[key][attr]}.")
        if domain == "arithmetic" and rng.random() < 0.5:
            a, op, b, c = rng.choice(keys["arithmetic"])
            name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
            sentences.append(_story(name, item, a, op, b, c))
        docs.append((domain, " ".join(sentences)))
    return docs


def pretraining_corpus(seed: int = 0, n_docs: int = 20000, *, n_entities: int = 24) -> list[str]:
    """The pretraining text of the world of ``seed``: ``n_docs`` short documents stating its facts."""
    return [text for _, text in corpus_documents(seed, n_docs, n_entities=n_entities)]


def _story(name: str, item: str, a: int, op: str, b: int, c: int) -> str:
    if op == "+":
        return f"{name} had {a} {item} and got {b} more. Since {a} + {b} = {c}, {name} had {c} {item}."
    if op == "-":
        return f"{name} had {a} {item} and gave away {b}. Since {a} - {b} = {c}, {name} had {c} {item} left."
    return f"{name} filled {a} bags with {b} {item} each. Since {a} * {b} = {c}, {name} had {c} {item}."


# ----------------------------------------------------------------------------------------------------
# Benchmark items

def _word_problem(rng: random.Random, a: int, op: str, b: int) -> str:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    if op == "+":
        return rng.choice([f"{name} has {a} {item}. {name} finds {b} more. How many {item} does {name} have now?",
                           f"{name} collected {a} {item} on Monday and {b} {item} on Tuesday. How many {item} in total?"])
    if op == "-":
        return rng.choice([f"{name} has {a} {item} and gives {b} away. How many {item} are left?",
                           f"There were {a} {item} in a box. {name} took {b}. How many {item} remain in the box?"])
    return rng.choice([f"{name} has {a} bags with {b} {item} in each bag. How many {item} are there?",
                       f"Each shelf holds {b} {item}. {name} fills {a} shelves. How many {item} is that?"])


# (question, attribute, answer) templates for short factual questions, per domain. The answer restates the
# fact as the corpus' first template does, so it is a one-sentence, exactly checkable answer.
_QUESTIONS = {
    "geography": [("What is the capital of {k}?", "capital", "The capital of {k} is {v}."),
                  ("On which continent is {k}?", "continent", "{k} is a country in {v}.")],
    "animals": [("What colour is the {k}?", "colour", "The {k} is {v}."),
                ("What does the {k} eat?", "diet", "The {k} eats {v}."),
                ("Where does the {k} live?", "habitat", "The {k} lives in the {v}.")],
    "people": [("What is the profession of {k}?", "profession", "{k} is {a}."),
               ("In which city does {k} live?", "city", "{k} lives in {v}.")],
    "materials": [("Which property does {k} have?", "property", "{K} is {v}."),
                  ("What is the hardness of {k}?", "hardness", "The hardness of {k} is {v}.")],
}


def _facts(world: World, domain: str) -> dict:
    return {"geography": world.countries, "animals": world.animals, "people": world.people,
            "materials": world.materials}[domain]


def _attribute_values(world: World, domain: str, attr: str) -> list[str]:
    return sorted({f[attr] for f in _facts(world, domain).values()})


def _gsm_item(world: World, rng: random.Random, domain: str, key) -> Example:
    if domain == "arithmetic":
        a, op, b, c = key
        return Example(format_prompt(_word_problem(rng, a, op, b)), f"{a} {op} {b} = {c} #### {c}",
                       domain=domain, metric="exact_match")
    if domain == "sequences":
        s, d = key
        terms = [s + i * d for i in range(4)]
        question = f"What is the next number in the sequence {', '.join(map(str, terms))}?"
        return Example(format_prompt(question), f"{terms[-1]} + {d} = {terms[-1] + d} #### {terms[-1] + d}",
                       domain=domain, metric="exact_match")
    question, attr, _ = rng.choice(_QUESTIONS[domain])
    return Example(format_prompt(question.format(k=key)), _facts(world, domain)[key][attr],
                   domain=domain, metric="exact_match")


def _dolly_item(world: World, rng: random.Random, domain: str, key) -> Example:
    if domain == "geography":
        f = world.countries[key]
        return Example(format_prompt(f"Tell me about the country {key}."),
                       f"{key} is a country in {f['continent']}. Its capital is {f['capital']}.", domain=domain)
    if domain == "animals":
        f = world.animals[key]
        return Example(format_prompt(f"Describe the {key}."),
                       f"The {key} is {_a(f['colour'])} animal that lives in the {f['habitat']} and eats {f['diet']}.",
                       domain=domain)
    if domain == "people":
        f = world.people[key]
        return Example(format_prompt(f"Who is {key}?"),
                       f"{key} is {_a(f['profession'])} who lives in {f['city']}.", domain=domain)
    if domain == "materials":
        f = world.materials[key]
        return Example(format_prompt(f"Summarise what is known about {key}."),
                       f"{key.capitalize()} is {_a(f['property'])} material with a hardness of {f['hardness']}.",
                       domain=domain)
    if domain == "arithmetic":
        a, op, b, c = key
        return Example(format_prompt("Explain how to solve this problem.", _word_problem(rng, a, op, b)),
                       f"We compute {a} {_OP_WORD[op]} {b}, which is {c}. The answer is {c}.", domain=domain)
    s, d = key
    terms = [s + i * d for i in range(4)]
    return Example(format_prompt(f"Describe the pattern of the sequence {', '.join(map(str, terms))}."),
                   f"The sequence starts at {s} and goes up by {d} each time, so the next number is {terms[-1] + d}.",
                   domain=domain)


def _mmlu_item(world: World, rng: random.Random, domain: str, key) -> Example:
    if domain == "arithmetic":
        a, op, b, c = key
        question, answer = f"What is {a} {_OP_WORD[op]} {b}?", str(c)
        pool = [str(c + delta) for delta in (-3, -2, -1, 1, 2, 3) if c + delta >= 0]
    elif domain == "sequences":
        s, d = key
        terms = [s + i * d for i in range(4)]
        question, answer = f"Which number comes next: {', '.join(map(str, terms))}?", str(terms[-1] + d)
        pool = [str(terms[-1] + e) for e in range(1, 7) if e != d]
    else:
        template, attr, _ = rng.choice(_QUESTIONS[domain])
        question, answer = template.format(k=key), _facts(world, domain)[key][attr]
        pool = [v for v in _attribute_values(world, domain, attr) if v != answer]
    distractors = rng.sample([p for p in pool if p != answer], 3)
    choices = distractors + [answer]
    rng.shuffle(choices)
    listing = "\n".join(f"{letter}. {choice}" for letter, choice in zip("ABCD", choices, strict=True))
    return Example(format_prompt(f"{question}\n{listing}"), answer, choices=tuple(choices),
                   label=choices.index(answer), domain=domain, metric="mc_accuracy")


_MAKERS = {"dolly": _dolly_item, "gsm": _gsm_item, "mmlu": _mmlu_item}


def make_benchmark(suite: str, *, n_train: int = 1200, n_test: int = 200, seed: int = 0,
                   n_entities: int = 24, domains: tuple[str, ...] = DOMAINS) -> tuple[list[Example], list[Example]]:
    """``(train, test)`` examples of ``suite`` ("dolly", "gsm" or "mmlu") about the world of ``seed``.

    Items cycle over ``domains`` (so every domain is equally represented and ``Example.domain`` supports
    non-IID splits); train items draw from each domain's fine-tuning entities, test items from its
    held-out entities, whose facts only the pretraining corpus holds.
    """
    if suite not in _MAKERS:
        raise ValueError(f"unknown suite {suite!r}; use one of {SUITES}")
    unknown = set(domains) - set(DOMAINS)
    if unknown or not domains:
        raise ValueError(f"unknown or empty domains {sorted(unknown)}; use a non-empty subset of {DOMAINS}")
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train={n_train}, n_test={n_test}: sizes must be non-negative")
    world = make_world(seed, n_entities)
    out = []
    for part, n in ((0, n_train), (1, n_test)):
        rng = random.Random(f"fedmoe-bench-{suite}-{seed}-{n_entities}-{part}")
        order = {d: [] for d in domains}
        items = []
        for i in range(n):
            domain = domains[i % len(domains)]
            if not order[domain]:  # cycle through the split's keys in a fresh shuffled order
                order[domain] = list(world.split[domain][part])
                rng.shuffle(order[domain])
            items.append(_MAKERS[suite](world, rng, domain, order[domain].pop()))
        rng.shuffle(items)
        out.append(items)
    return out[0], out[1]
