"""Generate ``credit.csv``: a synthetic credit-risk table (the tabular example and the risk app's demo data).

Deterministic (fixed seed): running it again writes the same file byte for byte. The label
``default`` (0/1) follows a known log-odds, so a model trained on it has something real to find:
``late_payments`` is the strongest driver, then ``debt_ratio`` and ``income``, with smaller effects of
``employment``, ``credit_years``, ``utilization`` and ``purpose``; ``home`` and ``age`` carry almost
none. ``loan_amount`` depends on income and purpose (a regression target for examples). ``weight``
is a sampling weight: applicants from the over-sampled ``online`` channel count half.

    python examples/data/make_credit.py            # writes examples/data/credit.csv
    python examples/data/make_credit.py -n 4000 -o /tmp/credit.csv
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

EMPLOYMENT = ["salaried", "self_employed", "unemployed", "retired"]
EMPLOYMENT_P = [0.62, 0.18, 0.08, 0.12]
EMPLOYMENT_RISK = {"salaried": 0.0, "self_employed": 0.35, "unemployed": 1.1, "retired": 0.1}
HOME = ["rent", "own", "mortgage"]
PURPOSE = ["car", "home", "education", "business", "other"]
PURPOSE_RISK = {"car": 0.0, "home": -0.2, "education": 0.15, "business": 0.45, "other": 0.25}
PURPOSE_SIZE = {"car": 1.0, "home": 2.6, "education": 0.8, "business": 1.8, "other": 0.6}
COLUMNS = ["age", "income", "debt_ratio", "credit_years", "late_payments", "utilization", "employment",
           "home", "purpose", "channel", "loan_amount", "weight", "default"]


def generate(n: int = 3000, seed: int = 20240611) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    age = rng.integers(21, 76, n)
    employment = rng.choice(EMPLOYMENT, n, p=EMPLOYMENT_P)
    base_income = rng.lognormal(mean=10.6, sigma=0.45, size=n)
    income = base_income * np.where(employment == "unemployed", 0.35, 1.0) * np.where(employment == "retired", 0.7, 1.0)
    debt_ratio = np.clip(rng.beta(2.0, 5.0, n) * 1.4, 0.0, 1.4)
    credit_years = np.clip(np.minimum(age - 18, rng.gamma(3.0, 3.0, n)), 0, None)
    late_payments = rng.poisson(0.6 + 1.2 * debt_ratio, n)
    utilization = np.clip(rng.beta(2.0, 3.0, n) + 0.15 * debt_ratio, 0.0, 1.0)
    home = rng.choice(HOME, n, p=[0.45, 0.25, 0.30])
    purpose = rng.choice(PURPOSE, n, p=[0.35, 0.2, 0.15, 0.15, 0.15])
    channel = rng.choice(["branch", "online"], n, p=[0.6, 0.4])
    loan_amount = (0.25 * income * np.vectorize(PURPOSE_SIZE.get)(purpose) * rng.lognormal(0.0, 0.25, n))

    log_odds = (-2.6
                + 0.85 * late_payments
                + 2.2 * (debt_ratio - 0.4)
                - 1.1 * (np.log(income) - 10.6)
                + np.vectorize(EMPLOYMENT_RISK.get)(employment)
                - 0.04 * (credit_years - 8.0)
                + 0.9 * (utilization - 0.45)
                + np.vectorize(PURPOSE_RISK.get)(purpose)
                + 0.002 * (age - 45))
    default = (rng.random(n) < 1.0 / (1.0 + np.exp(-log_odds))).astype(int)
    weight = np.where(channel == "online", 0.5, 1.0)

    rows = []
    for i in range(n):
        rows.append({
            "age": int(age[i]), "income": int(round(float(income[i]))), "debt_ratio": round(float(debt_ratio[i]), 3),
            "credit_years": round(float(credit_years[i]), 1), "late_payments": int(late_payments[i]),
            "utilization": round(float(utilization[i]), 3), "employment": employment[i], "home": home[i],
            "purpose": purpose[i], "channel": channel[i], "loan_amount": int(round(float(loan_amount[i]))),
            "weight": float(weight[i]), "default": int(default[i]),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000, help="rows (default 3000)")
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("-o", "--out", type=Path, default=Path(__file__).with_name("credit.csv"))
    args = parser.parse_args()
    rows = generate(args.n, args.seed)
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    rate = sum(r["default"] for r in rows) / len(rows)
    print(f"wrote {args.out}: {len(rows)} rows, default rate {rate:.1%}")


if __name__ == "__main__":
    main()
