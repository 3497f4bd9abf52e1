"""Bad values are refused with one line that names the option to fix, and only options the command has (a message
that names an option of another command, or an old spelling, sends the user to a flag that does not exist)."""

from __future__ import annotations

import re

import pytest

from edge_unlearn.cli import main

from ..conftest import invoke_cli, one_line_error


@pytest.fixture(scope="module")
def files(digits_checkpoint, tmp_path_factory) -> dict[str, str]:
    import onnx

    from ..deploy.tensorrt.conftest import ours_fp32

    folder = tmp_path_factory.mktemp("messages")
    onnx.save(ours_fp32(), str(folder / "m.onnx"))
    (folder / "empty").mkdir()
    forgotten = folder / "forgotten.safetensors"
    made = invoke_cli(["forget", digits_checkpoint, "--forget", "3", "--samples", "4", "--no-eval", "-o", forgotten])
    assert made.exit_code == 0, made.output
    return {
        "ck": str(digits_checkpoint),
        "forgotten": str(forgotten),
        "onnx": str(folder / "m.onnx"),
        "empty": str(folder / "empty"),
        "out": str(folder / "out.bin"),
        "xml": str(folder / "out.xml"),
    }


#: (command line with {placeholders}, the option the message must name)
CASES = [
    ("bench {onnx} --batches 0", "--batches"),
    ("bench {onnx} --iterations 0", "--iterations"),
    ("bench {onnx} --iterations 3 --duration 1", "--duration"),
    ("bench {onnx} --duration nan", "--duration"),
    ("bench {onnx} --cuda-graph --no-gpu-timing", "--cuda-graph"),
    ("validate {onnx} --bundle {out} --max-forget-acc 2", "--max-forget-acc"),
    ("validate {onnx} --bundle {out} --min-agreement nan", "--min-agreement"),
    ("validate {onnx} --bundle {out} --batch-size 0", "--batch-size"),
    ("validate {onnx} --bundle {out} --audit-tolerance 0.1", "--audit"),
    ("build-engine {onnx} --batch-size 4 --max-batch 8", "--batch-size"),
    ("build-engine {onnx} --dla-core 0 --precision fp16", "--batch-size"),
    ("build-engine {onnx} --max-batch 0", "--max-batch"),
    ("bundle {ck} --retrained {ck} -o {out}", "--audit"),
    ("bundle {ck} --per-class 0 -o {out}", "--per-class"),
    ("bundle {forgotten} --dataset svhn --data-dir {empty} -o {out}", "--download"),
    ("evaluate {ck} --dataset svhn --data-dir {empty}", "--download"),
    ("forget {ck} --forget 3 --samples 0 -o {out}", "--samples"),
    ("forget {ck} --forget 3 --set steps=0 -o {out}", "--set"),
    ("train --lr 0 -o {out}", "--lr"),
    ("train --lr nan -o {out}", "--lr"),
    ("train --label-smoothing nan -o {out}", "--label-smoothing"),
    ("train --epochs -1 -o {out}", "--epochs"),
    ("export {ck} --opset 5 -o {out}", "--opset"),
    ("quantize {onnx} --calib-samples 0 -o {out}", "--calib-samples"),
    ("quantize {onnx} --calib svhn --data-dir {empty} -o {out}", "--download"),
    ("convert {onnx} --to openvino --data-dir {empty} -o {out}", "--calib"),
    ("convert {onnx} --to openvino --precision int8 --calib svhn --data-dir {empty} -o {xml}", "--download"),
    ("import --arch lenet --weights {ck} --stats-samples 0 -o {out}", "--stats-samples"),
    ("import --arch lenet --weights {ck} --dataset digits --stats-from svhn --data-dir {empty} -o {out}", "--download"),
]


@pytest.mark.parametrize("line, option", CASES, ids=[c[0].split(" {")[0] + ": " + c[1] for c in CASES])
def test_a_bad_value_names_the_right_option(files, line, option):
    args = line.format(**files).split()
    message = one_line_error(invoke_cli(args), option)
    command = main.commands[args[0]]
    own = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", message))
    assert named <= own, f"`{args[0]}` has no {sorted(named - own)}: {message}"
