"""The ``edge-unlearn`` command line: one module per command group, thin commands over the library.

- :mod:`.app` -- the group and the host commands (train, forget, retrain, evaluate, methods, models, demo);
- :mod:`.export` -- export, quantize, bundle, validate;  :mod:`.importer` -- import;
- :mod:`.report` -- bench, report, verify;  :mod:`.evidence` -- keygen, sign;
- :mod:`.tensorrt` -- build-engine, inspect-engine, doctor;
- :mod:`.options` -- the option groups (output, data, device, recipe, run folder, gate) and parser types;
- :mod:`.common` -- the group's error handling, renamed options, JSON output.
"""

try:
    from .app import main
except KeyboardInterrupt:  # Ctrl-C while the command line loads (numpy, onnxruntime): one line, exit 130
    from .common import interrupted

    interrupted()

__all__ = ["main"]
