"""Event generators for the built-in datasets: seeded synthetic card transactions, and a
row-by-row replay of scikit-learn's bundled breast-cancer data."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from shared.events import Envelope, Scalar

CATEGORIES = (
    "grocery", "fuel", "restaurants", "travel", "electronics", "online_retail",
    "entertainment", "health", "jewelry", "gambling",
)
CATEGORY_WEIGHTS = (24, 14, 18, 5, 6, 15, 8, 6, 2, 2)
RISKY = {"electronics": 1.2, "online_retail": 1.0, "jewelry": 1.6, "gambling": 1.8, "travel": 0.6}
TYPICAL_AMOUNT = {
    "grocery": 45, "fuel": 50, "restaurants": 35, "travel": 400, "electronics": 250,
    "online_retail": 60, "entertainment": 40, "health": 80, "jewelry": 300, "gambling": 100,
}
REGIONS = ("north", "south", "east", "west", "central")
AGE_BANDS = ("18-25", "26-35", "36-50", "51-65", "65+")
AGE_WEIGHTS = (15, 25, 30, 20, 10)
FIRST = ("Ada", "Ben", "Chloe", "Dev", "Elena", "Femi", "Grace", "Hiro", "Ines", "Jonas",
         "Kira", "Luca", "Maya", "Nils", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara")
LAST = ("Okafor", "Schmidt", "Nakamura", "Silva", "Dubois", "Kowalski", "Haddad", "Larsen",
        "Moreau", "Novak", "Patel", "Rossi", "Svensson", "Tanaka", "Walsh", "Yilmaz")
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Customer:
    """A synthetic card holder."""

    customer_id: str
    name: str
    email: str
    card_number: str
    region: str
    age_band: str
    spend_scale: float


def _luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        doubled = d * 2 if i % 2 == 0 else d
        total += doubled - 9 if doubled > 9 else doubled
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def _customer(rng: random.Random, index: int) -> Customer:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return Customer(
        customer_id=f"cust-{index:06d}",
        name=f"{first} {last}",
        email=f"{first.lower()}.{last.lower()}{index}@example.com",
        card_number=_luhn_card(rng),
        region=rng.choice(REGIONS),
        age_band=rng.choices(AGE_BANDS, AGE_WEIGHTS)[0],
        spend_scale=math.exp(rng.gauss(0, 0.4)),
    )


def transactions(count: int, seed: int = 7, customers: int | None = None) -> Iterator[Envelope]:
    """Yield `count` realistic card transactions; a few percent are fraud with learnable cues."""
    rng = random.Random(seed)
    pool = [_customer(rng, i) for i in range(customers or max(50, count // 20))]
    clock = EPOCH
    for index in range(count):
        customer = rng.choice(pool)
        clock += timedelta(seconds=rng.expovariate(1 / 3))
        fraud = rng.random() < 0.035
        category = _fraud_category(rng) if fraud else rng.choices(CATEGORIES, CATEGORY_WEIGHTS)[0]
        hour = rng.choice((0, 1, 2, 3, 4, 23)) if fraud and rng.random() < 0.6 else _day_hour(rng)
        typical = TYPICAL_AMOUNT[category] * customer.spend_scale
        ratio = rng.lognormvariate(1.4, 0.6) if fraud else rng.lognormvariate(0, 0.35)
        payload: dict[str, Scalar] = {
            "transaction_id": f"tx-{seed}-{index:08d}",
            "customer_id": customer.customer_id,
            "card_number": customer.card_number,
            "email": customer.email,
            "name": customer.name,
            "amount": round(typical * ratio, 2),
            "merchant_category": category,
            "hour": hour,
            "day_of_week": clock.weekday(),
            "distance_from_home_km": round(
                rng.lognormvariate(4.5, 1.2) if fraud and rng.random() < 0.7
                else rng.lognormvariate(1.5, 1.0), 1),
            "card_present": (rng.random() < 0.2) if fraud else (rng.random() < 0.7),
            "transactions_last_24h": rng.randint(4, 20) if fraud and rng.random() < 0.5
            else rng.randint(0, 5),
            "amount_vs_avg_ratio": round(ratio, 3),
            "region": customer.region,
            "age_band": customer.age_band,
            "is_fraud": fraud,
        }
        yield Envelope(
            event_id=f"transactions-{seed}-{index:08d}",
            dataset="transactions",
            subject_id=customer.customer_id,
            occurred_at=clock,
            source="lepton-produce",
            payload=payload,
        )


def _fraud_category(rng: random.Random) -> str:
    names = list(CATEGORIES)
    weights = [CATEGORY_WEIGHTS[i] * (1 + 6 * RISKY.get(n, 0)) for i, n in enumerate(names)]
    return rng.choices(names, weights)[0]


def _day_hour(rng: random.Random) -> int:
    return min(23, max(0, round(rng.gauss(14, 4))))


@cache
def _breast_cancer() -> tuple[list[str], list[list[float]], list[int]]:
    from sklearn.datasets import load_breast_cancer

    data: Any = load_breast_cancer()
    names = [str(n).replace(" ", "_") for n in data.feature_names]
    return names, data.data.tolist(), data.target.tolist()


def breast_cancer(count: int | None = None, seed: int = 0) -> Iterator[Envelope]:
    """Replay scikit-learn's breast-cancer rows in order (cycling past 569), labels included."""
    names, rows, targets = _breast_cancer()
    total = len(rows) if count is None else count
    for index in range(total):
        row = index % len(rows)
        payload: dict[str, Scalar] = {
            "record_id": f"bc-{row:04d}",
            "patient_id": f"patient-{row:04d}",
        }
        payload.update(zip(names, rows[row], strict=True))
        payload["malignant"] = targets[row] == 0
        yield Envelope(
            event_id=f"breast_cancer-{seed}-{index:06d}",
            dataset="breast_cancer",
            subject_id=f"patient-{row:04d}",
            occurred_at=EPOCH + timedelta(minutes=index),
            source="sklearn.load_breast_cancer",
            payload=payload,
        )


GENERATORS = {"transactions": transactions, "breast_cancer": breast_cancer}


def generate(dataset: str, count: int, seed: int = 7) -> Iterator[Envelope]:
    """Events for a built-in dataset."""
    if dataset == "transactions":
        # about two payments per customer: under the default bound of one event per customer
        # and model release, most of a demo stream can train the first releases
        return transactions(count, seed=seed, customers=max(50, count // 2))
    if dataset == "breast_cancer":
        return breast_cancer(count, seed=seed)
    raise KeyError(f"no generator for dataset {dataset!r}; have {sorted(GENERATORS)}")
