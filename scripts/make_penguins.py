"""Write ``data/penguins.csv``: a small, seeded, synthetic three-class table.

Made to exercise what real tabular data brings: string labels (three species), string
categoricals (``island``, ``sex``), and missing numeric values (about 4 % of each
measurement left empty). The numbers loosely follow the Palmer penguins (Gorman et al.);
they are generated, not measured, so the file can be rebuilt bit for bit anywhere::

    .venv/bin/python scripts/make_penguins.py            # writes data/penguins.csv
    .venv/bin/python scripts/make_penguins.py --rows 900 --seed 3 --output /tmp/p.csv
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("make_penguins")

# species: (share, islands with weights, means of bill length, bill depth, flipper, mass)
SPECIES = {
    "Adelie": (0.44, {"Biscoe": 0.3, "Dream": 0.35, "Torgersen": 0.35}, (38.8, 18.3, 190, 3700)),
    "Chinstrap": (0.20, {"Dream": 1.0}, (48.8, 18.4, 196, 3730)),
    "Gentoo": (0.36, {"Biscoe": 1.0}, (47.5, 15.0, 217, 5080)),
}
SPREAD = (2.8, 1.2, 7.0, 480.0)
MEASUREMENTS = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
MISSING_SHARE = 0.04


def generate(rows: int, seed: int) -> pd.DataFrame:
    """A deterministic table of ``rows`` penguins for ``seed``."""
    rng = np.random.default_rng(seed)
    names = list(SPECIES)
    species = rng.choice(names, size=rows, p=[SPECIES[n][0] for n in names])
    records = []
    for kind in species:
        _, islands, means = SPECIES[kind]
        island = rng.choice(list(islands), p=list(islands.values()))
        sex = rng.choice(["female", "male"])
        shift = 1.0 if sex == "male" else -1.0
        values = [
            round(float(rng.normal(mean + 0.4 * shift * sd, sd)), 1)
            for mean, sd in zip(means, SPREAD, strict=True)
        ]
        records.append(
            {"island": island, "sex": sex, **dict(zip(MEASUREMENTS, values, strict=True))}
        )
    frame = pd.DataFrame(records)
    for column in MEASUREMENTS:
        frame.loc[rng.random(rows) < MISSING_SHARE, column] = np.nan
    frame.insert(0, "penguin_id", [f"p{i:04d}" for i in range(1, rows + 1)])
    frame["species"] = species
    return frame


def main() -> None:
    """Parse the arguments and write the CSV."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "penguins.csv"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    frame = generate(args.rows, args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.output, index=False)
    log.info("wrote %d rows to %s", len(frame), args.output)


if __name__ == "__main__":
    main()
