"""Seeded synthetic clinical notes with per-hospital label skew and vocabulary/style skew.

Not real patients: a fast, controllable stand-in for scale runs and tests. Each hospital
draws its label mix from Dirichlet(alpha) and writes in its own style (abbreviations,
template, synonyms), so both label and feature distributions differ between sites. The test
set mixes all styles with uniform labels.
"""

from __future__ import annotations

import random

from gossipmed.learn.config import DataConfig
from gossipmed.learn.datasets.core import Example, TaskDataset

LABELS = ("cardiac", "respiratory", "diabetic", "infection", "fracture", "neurologic")

# Per label: (symptoms, findings, treatments); each entry is (plain wording, abbreviation).
_VOCAB: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]] = {
    "cardiac": (
        [
            ("chest pain", "CP"),
            ("palpitations", "palps"),
            ("shortness of breath on exertion", "DOE"),
        ],
        [("ST elevation", "STE"), ("raised troponin", "trop+"), ("irregular rhythm", "AF")],
        [("aspirin", "ASA"), ("beta blocker", "BB"), ("cardiology review", "cards r/v")],
    ),
    "respiratory": (
        [("cough", "cough"), ("wheeze", "wheeze"), ("breathlessness", "SOB")],
        [
            ("crackles at the bases", "basal creps"),
            ("low oxygen saturation", "low sats"),
            ("consolidation on chest film", "CXR consol"),
        ],
        [("inhaler", "MDI"), ("nebulised salbutamol", "salb nebs"), ("oxygen", "O2")],
    ),
    "diabetic": (
        [("thirst", "polydipsia"), ("frequent urination", "polyuria"), ("weight loss", "wt loss")],
        [
            ("high blood glucose", "BM high"),
            ("raised HbA1c", "HbA1c up"),
            ("ketones in urine", "ketonuria"),
        ],
        [("insulin", "insulin"), ("metformin", "MFN"), ("dietitian referral", "diet ref")],
    ),
    "infection": (
        [("fever", "pyrexia"), ("rigors", "rigors"), ("painful urination", "dysuria")],
        [
            ("raised white cell count", "WCC up"),
            ("high CRP", "CRP up"),
            ("positive blood culture", "BC+"),
        ],
        [("antibiotics", "abx"), ("intravenous fluids", "IVF"), ("paracetamol", "PCM")],
    ),
    "fracture": (
        [("fall at home", "FOOH"), ("wrist pain", "wrist pain"), ("unable to bear weight", "NWB")],
        [
            ("deformity", "deformity"),
            ("fracture line on x-ray", "#  on XR"),
            ("swelling and bruising", "swelling"),
        ],
        [
            ("plaster cast", "POP"),
            ("orthopaedic referral", "ortho ref"),
            ("analgesia", "analgesia"),
        ],
    ),
    "neurologic": (
        [
            ("headache", "HA"),
            ("weakness of one side", "hemiparesis"),
            ("slurred speech", "dysarthria"),
        ],
        [
            ("facial droop", "facial droop"),
            ("reduced GCS", "GCS down"),
            ("abnormal CT head", "CTH abn"),
        ],
        [
            ("stroke team review", "stroke r/v"),
            ("neurology referral", "neuro ref"),
            ("thrombolysis", "lysis"),
        ],
    ),
}

_TEMPLATES = (
    "Presents with {s}. On examination {f}. Plan: {t}.",
    "{s} noted. Exam shows {f}. Started {t}.",
    "Hx: {s}. O/E: {f}. Mx: {t}.",
    "Patient reports {s}; {f} found; given {t}.",
)


def _note(rng: random.Random, label: str, *, abbrev_rate: float, template: str) -> str:
    symptoms, findings, treatments = _VOCAB[label]

    def word(options: list[tuple[str, str]]) -> str:
        plain, short = rng.choice(options)
        return short if rng.random() < abbrev_rate else plain

    age = rng.randint(18, 95)
    sex = rng.choice(("man", "woman"))
    body = template.format(s=word(symptoms), f=word(findings), t=word(treatments))
    return f"Note: {age} year old {sex}. {body}"


def generate_hospital(
    *, seed: int, hospital: int, n: int, alpha: float, name: str
) -> list[Example]:
    """`n` notes from one hospital with its own label mix and writing style."""
    rng = random.Random(f"notes:{seed}:{hospital}")
    weights = [rng.gammavariate(alpha, 1.0) + 1e-6 for _ in LABELS]
    abbrev_rate = rng.random()
    template = _TEMPLATES[hospital % len(_TEMPLATES)]
    out = []
    for _ in range(n):
        label = rng.choices(LABELS, weights=weights)[0]
        out.append(
            Example(
                text=_note(rng, label, abbrev_rate=abbrev_rate, template=template),
                label=label,
                site=name,
            )
        )
    return out


def generate_test(*, n: int) -> list[Example]:
    """Uniform labels, every style: the global distribution all sites should learn."""
    rng = random.Random("notes:test")
    out = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        template = _TEMPLATES[rng.randrange(len(_TEMPLATES))]
        text = _note(rng, label, abbrev_rate=rng.random(), template=template)
        out.append(Example(text=text, label=label))
    return out


def load_notes(config: DataConfig) -> TaskDataset:
    names = tuple(f"hospital-{i}" for i in range(config.n_sites))
    per_site = config.max_train_examples // config.n_sites
    train: list[Example] = []
    for i, name in enumerate(names):
        train += generate_hospital(
            seed=config.seed, hospital=i, n=per_site, alpha=config.alpha, name=name
        )
    return TaskDataset(
        name="notes",
        label_prefix="Assessment:",
        labels=LABELS,
        train=tuple(train),
        test=tuple(generate_test(n=config.eval_size)),
        natural_sites=names,
    )
