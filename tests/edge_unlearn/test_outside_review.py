"""Findings of an outside review of the merged CLI (a new user's commands, wrong file kinds, --json on stdout):
each test pins one fix."""

from __future__ import annotations

import pytest

from tests.conftest import invoke_cli, one_line_error

# a safetensors header: what a user passes when mixing up the checkpoint and the bundle
_NOT_A_ZIP = b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"__metadata__":{}}'


def test_a_checkpoint_given_as_bundle_is_named_not_a_zip_and_never_advises_unpickling(tmp_path):
    from edge_unlearn.deploy.bundle import load_bundle
    from edge_unlearn.errors import ModelFileError

    wrong = tmp_path / "model.safetensors"
    wrong.write_bytes(_NOT_A_ZIP)
    with pytest.raises(ModelFileError, match="not a zip archive") as caught:
        load_bundle(wrong)
    assert "pickle" not in str(caught.value)


def test_a_checkpoint_given_as_npz_dataset_is_named_not_a_zip(tmp_path):
    wrong = tmp_path / "model.safetensors"
    wrong.write_bytes(_NOT_A_ZIP)
    line = one_line_error(
        invoke_cli(["train", "--dataset", f"npz:{wrong}", "-o", tmp_path / "t.safetensors"]), "not a zip archive"
    )
    assert "pickle" not in line
    assert not (tmp_path / "t.safetensors").exists()


@pytest.mark.parametrize("public", ["key.pem", "./key.pem"])
def test_keygen_refuses_a_public_key_path_equal_to_the_private_key(tmp_path, monkeypatch, public):
    """`keygen -o K --public K` used to write the private key, then replace it with the public one."""
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke_cli(["keygen", "-o", "key.pem", "--public", public]), "--public", "another path")
    assert list(tmp_path.iterdir()) == []


def test_keygen_names_the_option_whose_file_exists(tmp_path):
    (tmp_path / "taken.pub").write_text("someone's key")
    one_line_error(
        invoke_cli(["keygen", "-o", tmp_path / "new.pem", "--public", tmp_path / "taken.pub"]),
        "choose another --public path",
    )
    assert not (tmp_path / "new.pem").exists()
    assert (tmp_path / "taken.pub").read_text() == "someone's key"


@pytest.mark.parametrize(
    "name, content, kind",
    [
        ("model.onnx", b"\x08\x09\x12\x07pytorch", "is an ONNX model, not a checkpoint"),
        ("model.plan", b"ftrt\x00\x00\x00\x00engine", "is a TensorRT engine, not a checkpoint"),
        ("eval.npz", b"PK\x03\x04\x14\x00\x00\x00", "is a zip/.npz archive"),
    ],
)
@pytest.mark.parametrize("command", [["export", "-o", "out.onnx"], ["evaluate"]])
def test_another_artefact_given_as_checkpoint_is_named_for_what_it_is(
    tmp_path, monkeypatch, name, content, kind, command
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(content)
    line = one_line_error(invoke_cli([command[0], name, *command[1:]]), kind, ".safetensors")
    assert "re-create" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_damaged_checkpoint_is_still_called_corrupt(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 16)
    one_line_error(
        invoke_cli(["evaluate", tmp_path / "model.safetensors"]), "not a valid safetensors checkpoint", "corrupt"
    )


def test_bundle_defaults_to_the_checkpoint_dataset_like_evaluate_and_forget(digits_checkpoint, tmp_path):
    """`bundle` alone required --dataset although the checkpoint records it (evaluate/forget default to it)."""
    from edge_unlearn.checkpoint import load_checkpoint, save_checkpoint
    from edge_unlearn.deploy.bundle import load_bundle

    loaded = load_checkpoint(digits_checkpoint)
    loaded.model.class_mask[3] = False
    forgotten = tmp_path / "forgotten.safetensors"
    save_checkpoint(forgotten, loaded.model, loaded.meta)
    result = invoke_cli(["bundle", forgotten, "--per-class", "4", "-o", tmp_path / "eval.npz"])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(tmp_path / "eval.npz")
    assert len(bundle.labels) == 40 and sorted(set(bundle.labels.tolist())) == list(range(10))
    assert bundle.forgotten_classes == (3,)


def test_swapped_keys_are_named_for_what_they_are(tmp_path):
    """sign with KEY.pub, or verify with the private KEY: say which key goes where, not a cryptography excerpt."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    assert invoke_cli(["keygen", "-o", tmp_path / "key.pem", "-q"]).exit_code == 0
    one_line_error(invoke_cli(["sign", run, "--key", tmp_path / "key.pem.pub"]), "is a public key", "not KEY.pub")
    one_line_error(invoke_cli(["verify", run, "--key", tmp_path / "key.pem"]), "is a private key", "KEY.pub")
    assert sorted(p.name for p in run.iterdir()) == ["manifest.json"]
