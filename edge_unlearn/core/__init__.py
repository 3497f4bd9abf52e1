"""The torch-free core that the host side (training, unlearning, export) and the deployment side (validate, bench,
verify, doctor, report) both import. It imports nothing heavier than numpy; import-linter contracts in
pyproject.toml keep it that way.

- :mod:`.jsontext`: strict JSON text (NaN/Inf as null) for every JSON file and ``--json`` output;
- :mod:`.formats`: on-disk format tags and versions, the precisions, and the one reader of checkpoint headers;
- :mod:`.figures`: the one definition of accuracy and retain drop;
- :mod:`.preprocessing`: the one preprocessing record (fields, checks, JSON) both sides apply.

Errors (:mod:`edge_unlearn.errors`) and atomic file output (:mod:`edge_unlearn.fileio`) belong to the core too.
"""
