"""The gate and the evidence commands run on a device without torch: structural checks, check-only, keygen, sign
and verify --key (cryptography is a base dependency)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def test_gate_and_signatures_without_torch(artifacts, tmp_path):
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        from click.testing import CliRunner
        from edge_unlearn.cli import main
        from edge_unlearn.deploy.rundir import record, write_manifest
        cli = CliRunner()
        check = cli.invoke(main, ["build-engine", "--check-only", "--json", {str(artifacts.int8)!r}])
        record({str(run)!r}, "validate", {{"verdict": "pass"}}, [{str(artifacts.int8)!r}])
        write_manifest({str(run)!r})
        key = {str(tmp_path / "k.pem")!r}
        codes = [cli.invoke(main, ["keygen", "-o", key]).exit_code,
                 cli.invoke(main, ["sign", {str(run)!r}, "--key", key]).exit_code,
                 cli.invoke(main, ["verify", {str(run)!r}, "--key", key + ".pub"]).exit_code]
        loaded = [m for m in sys.modules if (m == "torch" or m.startswith("torch.")) and sys.modules[m] is not None]
        print(json.dumps({{"check": check.exit_code, "margin": [c["value"] for c in json.loads(check.output)["structure"]
                                                             if c["name"] == "fill_margin"][0],
                          "codes": codes, "torch_loaded": loaded}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["check"] == 0 and out["margin"] > 1000 and out["codes"] == [0, 0, 0] and out["torch_loaded"] == []
