"""Scaling laws on your data: an IsoFLOP ladder of `gpt3lab train` runs (ladder.py) sized by the rules of
shapes.py, fitted by fit.py (parabola per budget, power laws, L(C) = E + A·C^-alpha with bootstrap
intervals), drawn by plots.py; `gpt3lab scaling` (cli.py) ties them together."""
