"""``python -m raykd.tune``: the Ray Tune shell around the core, one job per module.

``cli`` (command line, exit codes) -> ``state`` (the sweep's folder, ``--resume``) -> ``raykd.preflight``
(every check before work, the sweep's Plan) -> ``prepare`` (node models, logit cache, teacher server as Ray tasks) ->
``run`` (the Tune sweep and its records) with ``trial`` (one trainable), ``progress`` (one line per
trial) and ``followup`` (Flower simulations after the sweep).
"""
