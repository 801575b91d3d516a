"""The course kit: exercises in the package, a student copy, and a grader for submissions.

- :mod:`~minildm.course.exercises`: the exercises, marked in the package source the nbgrader
  way (``### BEGIN SOLUTION`` / ``### END SOLUTION``), found, stubbed and spliced;
- :mod:`~minildm.course.student`: ``python -m minildm course student OUT`` (the student copy)
  and ``course check`` (the public checks, exercise by exercise);
- :mod:`~minildm.course.sandbox`: running untrusted code with time, memory and network limits;
- :mod:`~minildm.course.cgroups`: a control group per run, for its total memory and processes;
- :mod:`~minildm.course.probes` and :mod:`~minildm.course.probing`: what a hidden check asks a
  submission to compute, and how the question and its answer cross the sandbox, as data;
- :mod:`~minildm.course.grading`: ``course grade``: every exercise of every submission graded
  on its own, in the instructor's code, by the hidden checks in ``tests/grading``;
- :mod:`~minildm.course.gradescope`: ``course gradescope OUT.zip``, Gradescope's autograder bundle.
"""
