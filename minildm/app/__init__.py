"""The application around the paper: what a first reading of minildm can skip.

- :mod:`~minildm.app.cli`: the command line, ``python -m minildm COMMAND``; it parses and dispatches
- :mod:`~minildm.app.options`: what the commands share (common options, argument types, data loading)
- :mod:`~minildm.app.demo`: the whole pipeline on one screen (``python -m minildm demo``)
- :mod:`~minildm.app.sample_command`, :mod:`~minildm.app.evaluate_command`: the ``sample`` and
  ``evaluate`` commands; :mod:`~minildm.app.part_inputs` reads ``sample --map`` and ``--layout``
- :mod:`~minildm.app.course_commands`, :mod:`~minildm.app.interop_commands`: the ``course``,
  ``export`` and ``import-ae`` commands
- :file:`first_cell.py`: every notebook's first cell (makes ``import minildm`` work on Colab and in
  a fresh kernel); :mod:`~minildm.app.notebooks` writes it into the notebooks, and
  :mod:`~minildm.app.provenance` prints what it reports: profile, device and preset fingerprints
"""
