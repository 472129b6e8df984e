"""The ``fid-metric`` command; its entry point is ``fid_metric._cli.main.main``, whose docstring lists the modules."""
