"""Tests and notebooks run in the ``tiny`` profile unless told otherwise."""

import os

os.environ.setdefault("MINILDM_PROFILE", "tiny")
