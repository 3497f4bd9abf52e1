"""ExecuTorch ``.pte`` programs on the host: the runner (ExecuTorch's Python runtime needs torch) and the gate
that reads the program. Registered into :mod:`edge_unlearn.deploy.runners` by :mod:`edge_unlearn.torch_runners`,
so ``validate``, ``bench`` and ``report`` open ``.pte`` files like any other artefact once the host side is loaded."""
