"""The ``edge-unlearn`` command line: one module per command group, thin commands over the library.

- :mod:`.app` -- the group and the host commands (train, forget, retrain, evaluate, methods, models, demo);
- :mod:`.export` -- export, quantize, bundle, validate;  :mod:`.importer` -- import;
- :mod:`.report` -- bench, report, verify;  :mod:`.evidence` -- keygen, sign;
- :mod:`.tensorrt` -- build-engine, inspect-engine, doctor;  :mod:`.common` -- output options, errors, JSON.
"""

from .app import main

__all__ = ["main"]
