"""MTEB evaluation: our encoder as an mteb model, offline tasks on mteb's own task classes, reports."""
