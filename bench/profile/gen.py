#!/usr/bin/env python3
"""Writes a CSV file of about MIB MiB for bench/profile/run.sh: 8 numeric columns (some with
missing values), 2 categorical ones. Standard library only.

  gen.py FILE MIB
"""

import random
import sys

path, mib = sys.argv[1], float(sys.argv[2])
target = int(mib * 1024 * 1024)
rng = random.Random(7)
species = ["setosa", "versicolor", "virginica"]
with open(path, "w") as out:
    out.write("id,age,income,score,ratio,height,weight,count,species,city\n")
    written = 0
    row = 0
    while written < target:
        line = "%d,%d,%s,%.6f,%.4f,%.2f,%.2f,%d,%s,c%03d\n" % (
            row,
            rng.randint(18, 90),
            "" if row % 19 == 0 else str(rng.randint(20000, 150000)),
            rng.gauss(0, 1),
            rng.random(),
            rng.gauss(170, 10),
            rng.gauss(70, 15),
            rng.randint(0, 1000),
            rng.choice(species),
            rng.randint(0, 500),
        )
        out.write(line)
        written += len(line)
        row += 1
