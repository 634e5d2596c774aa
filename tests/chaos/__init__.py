"""The end-to-end fault, load and bad-input suite: harness modules, the CI test and what bench/chaos.py runs."""
